"""The `morlaif` command line, on top of the library and every service (nothing imports it back).

Modules:

* `main`: the `morlaif` command: ``serve``, ``score``, ``up`` and each service's subcommands (``pm``, ``ppo``,
  ``eval``, ``feedback``, ``sample``, ``sft``); heavy imports stay inside the commands.
* `up`: `Supervisor`, ``morlaif up``'s one-machine stack as supervised child processes (what ``make up`` runs).
* `bulk`: `score_file`, ``morlaif score``: a JSONL file of (prompt, response) records scored through the HTTP
  API, resumable, with rejected records written aside.
"""

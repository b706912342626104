"""Stop signals of long runs: the first SIGINT/SIGTERM asks for a stop at a safe point, a second one stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from morlaif.runs import Stopped, StopRequest, defer_stop_signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_asks_the_second_stops_and_the_handlers_come_back(sig, code, monkeypatch):
    import time

    from morlaif import runs

    monkeypatch.setattr(runs, "SAME_REQUEST_SECONDS", 0.2)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest()
    with defer_stop_signals(stop):
        os.kill(os.getpid(), sig)
        assert stop.is_set() and stop.signum == sig and stop.exit_code == code
        os.kill(os.getpid(), sig)  # the same request again at once (a terminal's group, then a launcher): no stop
        time.sleep(0.3)
        with pytest.raises(Stopped) as info:
            os.kill(os.getpid(), sig)
        assert info.value.exit_code == code and isinstance(info.value, KeyboardInterrupt)
        with pytest.raises(Stopped) as raised:
            stop.raise_stopped()
        assert raised.value.signum == sig
    assert {s: signal.getsignal(s) for s in before} == before
    assert StopRequest().exit_code == 0


def test_sigterm_outside_a_loop_unwinds_the_command_and_exits_143():
    """As PID 1 in a container SIGTERM was ignored; in any process it killed without running `finally`."""
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        from morlaif.runs import exit_on_sigterm
        exit_on_sigterm()
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            print("cleaned up", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "cleaned up" in out


def test_quiet_libraries_leaves_no_library_progress_bar_in_a_services_log():
    """Found by the Docker smoke test: transformers' GGUF dequantisation bar (plain tqdm) and its weight-loading
    bar filled the local judge's log under --quiet."""
    code = textwrap.dedent(
        """
        from morlaif.runs import quiet_libraries
        quiet_libraries()
        from tqdm.auto import tqdm
        from transformers.utils import logging
        for _ in tqdm(range(3), desc="library-bar"):  # as transformers' GGUF loader makes it
            pass
        for _ in logging.tqdm(range(3), desc="hf-bar"):  # as from_pretrained's "Loading weights"
            pass
        for _ in tqdm(range(3), desc="chosen-bar", disable=False):  # a bar that decides for itself still shows
            pass
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE"))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "library-bar" not in res.stderr and "hf-bar" not in res.stderr and "chosen-bar" in res.stderr

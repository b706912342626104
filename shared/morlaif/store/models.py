"""SQLAlchemy 2.x models of the label store. Ids of content rows are content hashes (sha256 hex)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Prompt", "Response", "Comparison", "Job", "Label", "content_id", "utcnow"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def content_id(*parts: str) -> str:
    """A stable id for content: sha256 over the parts, NUL-separated."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class Prompt(Base):
    __tablename__ = "prompts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Response(Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200), default="", index=True)
    #: how a sampled response was made (`morlaif sample`): model, backend, sampling settings, sample index
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Comparison(Base):
    """A prompt and two responses, stored in a canonical order (response_a_id < response_b_id)."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_a_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_b_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """Ask `judge` about `principle` for one comparison. Claimed under a lease by one worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("comparison_id", "principle", "judge", name="uq_job"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    principle: Mapped[str] = mapped_column(String(64), index=True)
    judge: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|running|done|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Label(Base):
    """p(A better than B | principle) from one judge; exactly one per (comparison, principle, judge)."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("comparison_id", "principle", "judge", name="uq_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparisons.id"), index=True)
    principle: Mapped[str] = mapped_column(String(64), index=True)
    judge: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None, unique=True)
    p_a: Mapped[float] = mapped_column(Float)
    hard: Mapped[bool] = mapped_column(default=False)  # parsed from text, not from logprobs
    per_order: Mapped[dict[str, Any]] = mapped_column(default=dict)  # raw logprobs or text of each order
    judge_model: Mapped[str] = mapped_column(String(200), default="")
    prompt_version: Mapped[str] = mapped_column(String(64), default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

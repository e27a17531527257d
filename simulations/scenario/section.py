"""The base of every scenario table: strict types, unknown keys refused, frozen."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A scenario table: ``strict`` (no coercion), ``extra="forbid"``, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

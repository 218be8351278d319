"""What a conversion found: the report returned by non-strict loads and raised by strict ones."""

import collections
import dataclasses


@dataclasses.dataclass
class LoadReport:
    """The outcome of `load_state_dict`, key by key (torch state_dict names).

    **Fields:**

    - `missing_keys`: arrays the model has and the state_dict lacks (kept at initialisation).
    - `unexpected_keys`: state_dict entries the model has no place for (ignored).
    - `shape_mismatches`: `{key: (expected, got)}` (the model's value is kept).
    - `dtype_mismatches`: `{key: (expected, got)}` (the model's value is kept).
    - `non_finite`: keys whose tensor holds NaN or infinity (the model's value is kept).
    - `reinitialized`: classifier keys left at initialisation because `num_classes` differs.
    - `adapted`: first-conv keys adapted to another `in_chans` (timm's rule).
    - `cast`: `{key: (from, to)}` torch dtype names of the floating tensors cast to the model's
      floating dtype on load, as torch's `load_state_dict` does (not a problem).
    - `filled`: `num_batches_tracked` counters the state_dict lacks; the model's own value is
      kept, as torch's BatchNorm does (not a problem).
    """

    missing_keys: list[str] = dataclasses.field(default_factory=list)
    unexpected_keys: list[str] = dataclasses.field(default_factory=list)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=dict
    )
    dtype_mismatches: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    non_finite: list[str] = dataclasses.field(default_factory=list)
    reinitialized: list[str] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    cast: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    filled: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key matched (adaptations asked for do not count as problems)."""
        return not (
            self.missing_keys
            or self.unexpected_keys
            or self.shape_mismatches
            or self.dtype_mismatches
            or self.non_finite
        )

    def problems(self) -> list[str]:
        """One line per problem, naming the key and what was expected."""
        lines = [
            f"missing key {k!r}: the state_dict has no entry for it" for k in self.missing_keys
        ]
        lines += [
            f"unexpected key {k!r}: the model has no such array" for k in self.unexpected_keys
        ]
        lines += [
            f"shape mismatch for {k!r}: expected {tuple(e)}, got {tuple(g)}"
            for k, (e, g) in self.shape_mismatches.items()
        ]
        lines += [
            f"dtype mismatch for {k!r}: expected {e}, got {g}"
            for k, (e, g) in self.dtype_mismatches.items()
        ]
        lines += [f"non-finite values (NaN or inf) in {k!r}" for k in self.non_finite]
        return lines

    def summary(self, limit: int = 5) -> str:
        """The problems in brief: a count per kind, then the first `limit` problem lines."""
        kinds = {
            "missing": self.missing_keys,
            "unexpected": self.unexpected_keys,
            "shape mismatches": self.shape_mismatches,
            "dtype mismatches": self.dtype_mismatches,
            "non-finite": self.non_finite,
        }
        counts = ", ".join(f"{len(v)} {k}" for k, v in kinds.items() if v)
        problems = self.problems()
        lines = [counts or "no problems", *problems[:limit]]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more")
        return "\n  ".join(lines)

    def notes(self) -> list[str]:
        """One line per kind of accepted change (not a problem): summarised, since a cast
        checkpoint casts every float key."""
        lines = []
        if self.reinitialized:
            lines.append(f"re-initialised (num_classes differs): {', '.join(self.reinitialized)}")
        if self.adapted:
            lines.append(f"adapted to in_chans: {', '.join(self.adapted)}")
        by_cast = collections.Counter(self.cast.values())
        for (source, target), n in by_cast.items():
            lines.append(
                f"cast to {target.removeprefix('torch.')}: {n} key{'s' * (n != 1)} from {source}"
            )
        if self.filled:
            n = len(self.filled)
            lines.append(
                f"kept the model's num_batches_tracked: {n} key{'s' * (n != 1)} absent from "
                "the state_dict"
            )
        return lines

    def __str__(self) -> str:
        lines = self.problems() + self.notes()
        return "\n".join(lines) if lines else "all keys matched"


class LoadWarning(UserWarning):
    """Warned by a `strict=False` load that did not fit everywhere. `.report` holds the full
    `LoadReport` (the message shows its summary), so code that catches the warning
    (`warnings.catch_warnings(record=True)`) can act on every problem."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


class ConversionError(ValueError):
    """A state_dict does not fit the model. `.report` holds the full `LoadReport`."""

    def __init__(self, report: LoadReport, hint: str = ""):
        self.report = report
        problems = report.problems()
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        message = "the state_dict does not fit the model:\n  " + "\n  ".join(shown) + more
        if hint:
            message += f"\n{hint}"
        super().__init__(message)

"""What a conversion found: the report returned by non-strict loads and raised by strict ones."""

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

    def __str__(self) -> str:
        lines = self.problems()
        if self.reinitialized:
            lines.append(f"re-initialised (num_classes differs): {', '.join(self.reinitialized)}")
        if self.adapted:
            lines.append(f"adapted to in_chans: {', '.join(self.adapted)}")
        return "\n".join(lines) if lines else "all keys matched"


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

"""Exported model against its source: max abs diff, cosine similarity, top-1 agreement.

Tolerances per variant (documented in docs/exporters.md):
- fp32: max abs diff <= 1e-3 x max(1, largest reference magnitude)
- fp16: mean cosine similarity >= 0.999, top-1 agreement >= 0.98 for classifiers
- int8: mean cosine similarity >= 0.98, top-1 agreement >= 0.90 for classifiers
GPT exports are held to greedy-token equality in fp32 (exporters/gpt.py), and, where the checkpoint
has a tokenizer, their other variants to perplexity on real text against the fp32 export
(`PERPLEXITY_LIMITS`): a gate that logits on random tokens cannot give (a 4-bit export can keep their
cosine above 0.98 while a real model's perplexity rises by a third).
"""

from dataclasses import dataclass, field

import numpy as np


class ParityError(Exception):
    """An export differs from its source beyond its variant's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.98),
    "int8": Tolerance(min_cosine=0.98, min_top1=0.90),
    # decoders only, weight-only in blocks of 32: a gate against broken graphs only (tiny random-weight
    # Llamas, whose logits are near uniform, give 0.84-0.9, a broken graph far less); the quality gate
    # is perplexity on real text (PERPLEXITY_LIMITS)
    "int4": Tolerance(min_cosine=0.8),
}


# the most a decoder variant's perplexity on real text may rise over its fp32 export's
PERPLEXITY_LIMITS = {"fp16": 0.01, "int8": 0.05, "int4": 0.05}


@dataclass
class ParityReport:
    variant: str
    max_abs: float
    cosine: float
    top1: float | None
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    perplexity: float | None = None  # on real text (decoders with a tokenizer)
    perplexity_change: float | None = None  # against the fp32 export's, as a fraction

    def failures(self, tolerance: Tolerance, scale: float = 1.0) -> list[str]:
        found = []
        if tolerance.max_abs is not None and self.max_abs > tolerance.max_abs * scale:
            found.append(f"max abs diff {self.max_abs:.3g} > {tolerance.max_abs * scale:.3g}")
        if tolerance.min_cosine is not None and self.cosine < tolerance.min_cosine:
            found.append(f"cosine similarity {self.cosine:.5f} < {tolerance.min_cosine}")
        if tolerance.min_top1 is not None and self.top1 is not None and self.top1 < tolerance.min_top1:
            found.append(f"top-1 agreement {self.top1:.3f} < {tolerance.min_top1}")
        return found

    def summary(self) -> str:
        top1 = "" if self.top1 is None else f", top-1 {self.top1:.3f}"
        text = "" if self.perplexity is None else f", perplexity {self.perplexity:.3f}"
        if self.perplexity_change is not None:
            text += f" ({100 * self.perplexity_change:+.2f}% vs fp32)"
        return f"{self.variant}: max abs diff {self.max_abs:.3g}, cosine {self.cosine:.5f}{top1}{text}"


def compare(
    variant: str,
    expected: list[list[np.ndarray]],
    actual: list[list[np.ndarray]],
    classifier: bool = False,
) -> ParityReport:
    """`expected[i][j]`: output j of case i. Cosine is per row (batch item), averaged over every
    output and case; top-1 compares the first output's argmax over its last axis."""
    max_abs, cosines, agree, total = 0.0, [], 0, 0
    for want_case, got_case in zip(expected, actual, strict=True):
        for want, got in zip(want_case, got_case, strict=True):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            if want.shape != got.shape:
                raise ParityError(f"{variant}: output shape {got.shape}, source gives {want.shape}")
            max_abs = max(max_abs, float(np.abs(want - got).max(initial=0.0)))
            cosines.extend(_row_cosines(want, got))
        if classifier:
            want_top, got_top = want_case[0].argmax(-1), got_case[0].argmax(-1)
            agree += int((want_top == got_top).sum())
            total += want_top.size
    return ParityReport(
        variant=variant,
        max_abs=max_abs,
        cosine=float(np.mean(cosines)) if cosines else 1.0,
        top1=agree / total if classifier and total else None,
        shapes=[tuple(case[0].shape) for case in expected],
    )


def _row_cosines(want: np.ndarray, got: np.ndarray) -> list[float]:
    rows_want = want.reshape(len(want), -1) if want.ndim > 1 else want.reshape(1, -1)
    rows_got = got.reshape(rows_want.shape)
    norms = np.linalg.norm(rows_want, axis=1) * np.linalg.norm(rows_got, axis=1)
    dots = (rows_want * rows_got).sum(axis=1)
    # two all-zero rows are identical; one zero row against a non-zero one is not
    return [1.0 if n == 0 and np.allclose(a, b) else (d / n if n else 0.0)
            for d, n, a, b in zip(dots, norms, rows_want, rows_got)]


def perplexity(score, chunks: list[list[int]]) -> float:
    """exp of the mean negative log likelihood of every token after each chunk's first; `score(chunk)`
    gives [len(chunk) - 1, vocab] logits."""
    losses = []
    for chunk in chunks:
        logits = np.asarray(score(chunk), np.float64)
        top = logits.max(axis=-1, keepdims=True)
        normalizer = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
        losses.extend(normalizer - logits[np.arange(len(chunk) - 1), chunk[1:]])
    return float(np.exp(np.mean(losses)))


def check_perplexity(report: ParityReport, reference: float) -> None:
    report.perplexity_change = report.perplexity / reference - 1
    limit = PERPLEXITY_LIMITS.get(report.variant)
    if limit is not None and report.perplexity_change > limit:
        raise ParityError(
            f"{report.variant} export's perplexity on real text is {report.perplexity:.3f}, "
            f"{100 * report.perplexity_change:+.1f}% over the fp32 export's {reference:.3f} (limit "
            f"+{100 * limit:.0f}%); it is not published"
        )


def reference_scale(expected: list[list[np.ndarray]]) -> float:
    return max([1.0] + [float(np.abs(out).max(initial=0.0)) for case in expected for out in case])


def check(report: ParityReport, expected: list[list[np.ndarray]], tolerance: Tolerance | None = None) -> None:
    tolerance = tolerance or TOLERANCES[report.variant]
    failures = report.failures(tolerance, reference_scale(expected))
    if failures:
        raise ParityError(
            f"{report.variant} export is outside its tolerance against the source model on shapes "
            f"{report.shapes}: {'; '.join(failures)}"
        )

"""Score each kept thought step by step with a process reward model; reject traces under the threshold."""

from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.typing import StepOutput
from pydantic import PrivateAttr

from pipelines.spec import PrmConfig


class PrmFilter(Step):
    """Adds ``step_scores``/``prm_score``/``prm_first_error`` to each sample (None when unscored), flips
    ``kept`` to False with reason ``prm`` under the threshold, and recomputes the row's ``pass_rate``."""

    prm: PrmConfig
    _scorer: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> list[str]:
        return ["problem", "samples"]

    @property
    def outputs(self) -> list[str]:
        return ["samples", "pass_rate"]

    def load(self) -> None:
        super().load()
        from prm.scorer import PrmScorer

        self._scorer = PrmScorer(self.prm)

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        from prm.filter import score_rows

        rows = score_rows(self._scorer, inputs, self.prm.score_rejected)
        stats = self._scorer.stats.as_dict()
        self._logger.info(f"prm: {stats['scored']} traces scored ({stats['traces_per_s']} traces/s, "
                          f"{stats['tokens_per_s']} tokens/s), {stats['unscored_too_long']} too long")
        yield rows

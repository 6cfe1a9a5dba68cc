"""``distill.axolotl.kd_plugin.plugin.TopKTailKDPlugin``: Axolotl's KD plugin (its keys, collators and
callbacks) with the factory's trainer, whose loss is the top-k + tail divergence of ``loss.py``.

Listed alone in a config's ``plugins:`` (Axolotl imports it by name, so the repository root must be on
PYTHONPATH: ``distill train`` sets it). ``register`` refuses the settings ``rules.py`` names, before Axolotl
validates the rest of the config."""

from __future__ import annotations

from typing import Any

from axolotl.integrations.kd import KDPlugin

from distill.axolotl.kd_plugin.rules import kd_config_problem


class TopKTailKDPlugin(KDPlugin):
    def register(self, cfg: dict[str, Any]) -> None:
        problem = kd_config_problem(dict(cfg))
        if problem:
            raise ValueError(problem)

    def get_input_args(self) -> str:
        return "distill.axolotl.kd_plugin.args.TopKTailKDArgs"

    def get_training_args_mixin(self) -> str:
        return "distill.axolotl.kd_plugin.args.TopKTailKDTrainingArgsMixin"

    def get_training_args(self, cfg: Any) -> dict[str, Any]:
        return {**super().get_training_args(cfg), "kd_divergence": cfg.kd_divergence or "forward",
                "kd_jsd_beta": cfg.kd_jsd_beta}

    def get_trainer_cls(self, cfg: Any) -> type | None:
        if not cfg.kd_trainer:
            return None
        from distill.axolotl.kd_plugin.trainer import TopKTailKDTrainer

        return TopKTailKDTrainer

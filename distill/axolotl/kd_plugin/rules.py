"""Which KD settings a config may combine: one check for `distill config kd` (a SpecError) and for the plugin
itself when Axolotl loads it (a ValueError), so a hand-edited config is refused by the same rules.

Pure Python on the config dict (no torch, no axolotl)."""

from __future__ import annotations

from typing import Any

PLUGIN = "distill.axolotl.kd_plugin.plugin.TopKTailKDPlugin"
DATASET_TYPE = "distill.axolotl.kd_plugin.chat_template"
AXOLOTL_PLUGINS = ("axolotl.integrations.kd.KDPlugin", "kd.KDPlugin")
DIVERGENCES = ("forward", "reverse", "jsd", "reverse_sampled")
# reverse_sampled: the per-token estimate of KL(student || teacher) from the sampled token alone (on-policy rows)
SAMPLED = "reverse_sampled"
# The export's column of the teacher's log-probability of each following token (scored targets only)
TOKEN_LOGPROB_FIELD = "target_token_logprob"
# In the prepared rows, the sampled token rides as one more entry of each position's target lists, marked by this
# target_mask value (the top-k entries have 1): Axolotl's collators pad and pack the lists as they are
SAMPLED_TOKEN_MASK = 2


def kd_config_problem(config: dict[str, Any]) -> str | None:
    """The first thing wrong with a KD config's loss settings, as one line naming the key and the fix; None if
    the config is not a KD config or is fine."""
    if not config.get("kd_trainer"):
        return None
    plugins = list(config.get("plugins") or [])
    ours = PLUGIN in plugins
    axolotls = [p for p in plugins if p in AXOLOTL_PLUGINS]
    if ours and axolotls:
        return (f"plugins: list {PLUGIN} alone, without {axolotls[0]}: it is Axolotl's KD plugin with the top-k + "
                "tail loss, and with both listed the first one's trainer wins")
    if config.get("kd_normalize_topk"):
        return ("kd_normalize_topk: true renormalises the student over the teacher's k ids, so no other token's "
                "logit and not the block's total mass get any gradient; set kd_normalize_topk: false")
    beta = config.get("kd_beta") or 0.0
    if not ours:
        if beta > 0:
            return (f"kd_beta: {beta} is Axolotl's reverse KL / JSD summed over the truncated top k, not a divergence "
                    f"(without normalisation its minimiser is q = p/e); use {PLUGIN} (`distill config kd --loss "
                    "reverse|jsd`, the default templates) and kd_beta: 0")
        for key in ("kd_divergence", "kd_jsd_beta"):
            if config.get(key) is not None:
                return f"{key}: read only by {PLUGIN}; add it to plugins: (in place of Axolotl's KDPlugin)"
        return None
    if beta != 0:
        return (f"kd_beta: {beta} is Axolotl's own knob, unused by the top-k + tail loss; set kd_beta: 0 and "
                "kd_divergence: reverse, or kd_divergence: jsd with kd_jsd_beta")
    divergence = config.get("kd_divergence") or "forward"
    if divergence not in DIVERGENCES:
        return f"kd_divergence: {divergence!r} is not one of {', '.join(DIVERGENCES)}"
    jsd_beta = config.get("kd_jsd_beta")
    if divergence == "jsd" and (jsd_beta is None or not 0 < jsd_beta < 1):
        return f"kd_jsd_beta: {jsd_beta} with kd_divergence: jsd; give the mixture weight of the teacher in (0, 1)"
    if divergence != "jsd" and jsd_beta is not None:
        return f"kd_jsd_beta: {jsd_beta} is only read with kd_divergence: jsd; remove it or use jsd"
    if divergence == SAMPLED:
        if config.get("kd_online_server_base_url"):
            return (f"kd_divergence: {SAMPLED} reads the teacher's log-probability of each sampled token from the "
                    "export (target_token_logprob); the online collator has none: use reverse, or offline KD")
        if (config.get("kd_ce_alpha") or 0) != 0:
            return (f"kd_ce_alpha: {config['kd_ce_alpha']} with kd_divergence: {SAMPLED} puts a cross-entropy on the "
                    "student's own samples (it raises whatever the student sampled); set kd_ce_alpha: 0")
    if config.get("kd_temperature") not in (None, 1, 1.0):
        return (f"kd_temperature: {config['kd_temperature']}: the top-k + tail loss compares the raw (T = 1) "
                "distributions, and the teacher's tail at another temperature is unknown from its top k; set 1.0")
    if config.get("kd_online_server_base_url"):
        return None  # the online collator asks the teacher per batch: no stored log-probabilities to read
    for index, dataset in enumerate(config.get("datasets") or []):
        if not isinstance(dataset, dict):
            continue
        if dataset.get("type") != DATASET_TYPE:
            return (f"datasets[{index}].type: {dataset.get('type')!r} would not keep the teacher's raw top-k "
                    f"log-probabilities (Axolotl's KD strategy renormalises them, losing the tail); use {DATASET_TYPE}")
        if dataset.get("temperature") not in (None, 1, 1.0):
            return (f"datasets[{index}].temperature: {dataset['temperature']}: the stored log-probabilities are raw "
                    "(vLLM's and the forward pass's, T = 1) whatever the sampling temperature; set temperature: 1.0")
    return None

"""The factory's Axolotl KD plugin: a top-k + tail divergence (forward KL, reverse KL, JSD) instead of Axolotl
0.19's truncated top-k loss. ``loss.py`` is pure torch (tested in the product's venv); ``plugin.py``, ``args.py``,
``trainer.py`` and ``chat_template.py`` import axolotl and run only inside ``axolotl train`` (.venv-train), which
loads ``distill.axolotl.kd_plugin.plugin.TopKTailKDPlugin`` from a config's ``plugins:`` list. Nothing is imported
here, so the loss can be imported without axolotl."""

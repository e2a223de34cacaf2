"""TIRG on generated CSS-like scenes: the scenes (scenes.py), training
(``python -m training.tirg.train``, ``make train-tirg``), evaluation and a demo.
The network and the checkpoint loader it writes for stay in
embedder_service/tirg/."""

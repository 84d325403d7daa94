"""AlpacaEval 2.0's figures of a round, computed by AlpacaEval's own code where it runs offline.

- ``win_rate``, ``standard_error``, ``discrete_win_rate``, ``n_wins`` ...: ``alpaca_eval.metrics.winrate.get_winrate``
  on the per-prompt preferences in [1, 2] (2 = the round's answer is better), exactly as AlpacaEval reports them
  (percentages).
- ``length_controlled_winrate``: AlpacaEval's GLM, fitted by its own ``make_dmatrix_for_model`` and
  ``fit_LogisticRegressionCV`` (L1, liblinear, 5-fold grouped CV, fractional targets), then the mean predicted
  preference at zero length difference. AlpacaEval 2.0's leaderboard GLM (``length_controlled_v1``) also has an
  instruction-difficulty term and is regularised towards two "gamed" baselines; both come from ``df_gamed.csv``,
  which ``_get_featurized_data`` downloads from the hub at run time, so they cannot run on a machine without the
  hub. Here the GLM is AlpacaEval's ``length_controlled_minimal``: the same ``tanh(std_delta_len)`` length term
  (lengths in characters, baseline minus model, divided by their standard deviation) and the same intercept
  (``not_gamed_baseline``), without those two parts. ``lc_glm`` in the manifest names it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

log = logging.getLogger(__name__)
GLM_NAME = "length_controlled_minimal"
LC_DIFFERS = ("AlpacaEval's length_controlled_minimal GLM: the leaderboard's length_controlled_v1 adds an "
              "instruction-difficulty term and regularisation to gamed baselines, both read from the hub's "
              "df_gamed.csv")


def _featurized(prefs: Sequence[float], outputs: Sequence[str], baselines: Sequence[str]) -> Any:
    """The training frame ``_get_featurized_data`` builds, less its hub columns (the minimal GLM uses none)."""
    import pandas as pd

    delta = pd.Series([len(b) for b in baselines], dtype=float) - pd.Series([len(o) for o in outputs], dtype=float)
    df = pd.DataFrame({"preference": pd.Series(prefs, dtype=float).replace({0.0: 1.5}) - 1})
    df["std_delta_len"] = delta / delta.std()
    df["not_gamed_baseline"] = True
    return df


def length_controlled(prefs: Sequence[float], outputs: Sequence[str], baselines: Sequence[str]) -> dict[str, Any]:
    """``length_controlled_winrate`` and ``lc_standard_error`` (percent), or None with ``lc_unstable_reason``."""
    from alpaca_eval.metrics import glm_winrate as glm

    info = glm.GLM_INFO[GLM_NAME]
    df = _featurized(prefs, outputs, baselines)
    n_splits = info["kwargs"]["n_splits"]
    if len(df) < 2 * n_splits:
        return _unfit(f"{len(df)} prompts: too few for the GLM's {n_splits}-fold cross-validation")
    if not math.isfinite(float(df["std_delta_len"].abs().max())):
        return _unfit("every answer has its baseline's length: the length difference has zero variance")
    test = df[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0.0
    try:
        xy, x_test = glm.make_dmatrix_for_model(df, test, formula=info["formula"])
        model = glm.fit_LogisticRegressionCV(xy, "preference", is_ytrue_proba=True, **info["kwargs"])
    except ValueError as err:  # sklearn refuses a degenerate frame (e.g. one class only)
        return _unfit(f"the GLM could not be fitted: {err}")
    predicted = model.predict_proba(x_test)[:, 1]
    import pandas as pd

    return {"length_controlled_winrate": float(predicted.mean() * 100),
            "lc_standard_error": float(pd.Series(predicted).sem() * 100),
            "lc_weights": {k: float(v) for k, v in zip(x_test.columns, model.coef_[0])}}


def _unfit(reason: str) -> dict[str, Any]:
    log.warning("AlpacaEval LC win rate not computed: %s", reason)
    return {"length_controlled_winrate": None, "lc_standard_error": None, "lc_unstable_reason": reason}


def figures(prefs: Sequence[float], outputs: Sequence[str], baselines: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``alpaca_eval`` section: AlpacaEval's win-rate figures and its LC win rate."""
    import pandas as pd
    from alpaca_eval.metrics.winrate import get_winrate

    out = {k: (float(v) if isinstance(v, float) else int(v) if hasattr(v, "__int__") else v)
           for k, v in get_winrate(pd.DataFrame({"preference": list(prefs)})).items()}
    out.update(length_controlled(prefs, outputs, baselines))
    out.update(lc_glm=GLM_NAME, lc_differs=LC_DIFFERS)
    return out

"""Binomial GLMM for population counts: the count-aware abundance model.

``count ~ Binomial(n, p)``, ``logit p = X·β + u_patient + u_sample``, with
``u_patient ~ N(0, σ_p²)`` (the patient's own level, as in every model of the trial) and
``u_sample ~ N(0, σ_o²)`` (an observation-level random effect: the overdispersion of real
counts beyond binomial sampling). This is the model diffcyt's GLMM and CATALYST's
``diffcyt-DA-GLMM`` fit with lme4's ``glmer``. Unlike the logit-LMM, a sample's weight follows
how many events stand behind it: 36 plasmablasts inform less than 3,000 T cells, and a
population at 0 is a count of 0, not ``log(½ / n)``.

Fitted under the Laplace approximation: for given variances the penalised likelihood is
maximised over ``(β, u)`` by Newton steps (the joint mode, as lme4's ``glmer(nAGQ = 0)``);
the two log-SDs maximise the Laplace approximation of the likelihood with ``β`` integrated
out as well, the restricted (REML) form glmmTMB fits with ``REML = TRUE``: maximum
likelihood's variances are too small in trials of this size (see :func:`_laplace`). Both
random effects have one level per observation or per patient, so their blocks of the
Hessian are diagonal and are eliminated in closed form: a fit costs a few hundred solves
of a (cells + patients)-sized system. ``Cov(β)`` is the ``β`` block of the inverse Hessian
at the mode. Why not a Python package:
statsmodels' ``BinomialBayesMixedGLM`` is a Bayesian model (normal priors on the fixed
effects and the log-SDs, variational or MAP fit), whose intervals are not the frequentist
ones this trial's contrasts need; no maintained Python package fits the frequentist
binomial GLMM. ``benchmarks/bench_stats.py`` compares this fit with lme4.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from immunoprofile.tl._models import FAILED, fit_lmm

#: Bounds of the log-SDs searched (SD 1e-3 to 20 on the logit scale).
_LOG_SD = (np.log(1e-3), np.log(20.0))
_NEWTON_STEPS = 60


def _information(Xp: np.ndarray, W: np.ndarray, k: int, sd_p: float, sd_o: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (β, u_patient) block of the Hessian once the diagonal sample block ``d = W +
    1/σ_o²`` is eliminated: ``(A, d, shrink)`` with ``shrink = W − W²/d``."""
    d = W + 1.0 / sd_o**2
    shrink = W - W * W / d
    A = (Xp * shrink[:, None]).T @ Xp
    A[k:, k:] += np.eye(Xp.shape[1] - k) / sd_p**2
    return A, d, shrink


def _mode(successes: np.ndarray, trials: np.ndarray, Xp: np.ndarray, k: int,
          sd_p: float, sd_o: float, start: np.ndarray):
    """Joint mode of (β, u_patient, u_sample) for given SDs by damped Newton.

    ``Xp`` is ``[X | Z_patient]`` (its first ``k`` columns the fixed effects). Returns
    ``(params, u_o, penalised log-likelihood, W, converged)``; ``params`` = ``[β, u_patient]``.
    """
    prec_p, prec_o = 1.0 / sd_p**2, 1.0 / sd_o**2
    params, u_o = start[: Xp.shape[1]].copy(), start[Xp.shape[1]:].copy()

    def penalised(params, u_o):
        eta = Xp @ params + u_o
        ll = successes @ eta - trials @ np.logaddexp(0.0, eta)
        return ll - 0.5 * prec_p * params[k:] @ params[k:] - 0.5 * prec_o * u_o @ u_o

    value = penalised(params, u_o)
    converged = False
    for _ in range(_NEWTON_STEPS):
        eta = Xp @ params + u_o
        mu = special.expit(eta)
        W = trials * mu * (1 - mu)
        resid = successes - trials * mu
        g_r = Xp.T @ resid
        g_r[k:] -= prec_p * params[k:]
        g_o = resid - prec_o * u_o
        # The sample block of the Hessian is diagonal: eliminate it.
        A, d, _ = _information(Xp, W, k, sd_p, sd_o)
        rhs = g_r - Xp.T @ (W / d * g_o)
        try:
            step_r = np.linalg.solve(A, rhs)
        except np.linalg.LinAlgError:
            step_r = np.linalg.lstsq(A, rhs, rcond=None)[0]
        step_o = (g_o - W * (Xp @ step_r)) / d
        t = 1.0
        while t > 1e-6:
            trial_r, trial_o = params + t * step_r, u_o + t * step_o
            new = penalised(trial_r, trial_o)
            if np.isfinite(new) and new >= value - 1e-10 * abs(value):
                break
            t /= 2
        else:
            converged = np.max(np.abs(step_r)) < 1e-6  # no ascent left along the step
            break
        params, u_o = trial_r, trial_o
        gain, value = new - value, new
        if abs(gain) < 1e-12 * max(1.0, abs(value)) or np.max(np.abs(t * step_r)) < 1e-10:
            converged = True
            break
    eta = Xp @ params + u_o
    mu = special.expit(eta)
    W = trials * mu * (1 - mu)
    return params, u_o, value, W, converged


def _laplace(log_sd: np.ndarray, successes, trials, Xp, k, patient, n_patients, const, cache,
             reml=True):
    """Minus the restricted Laplace log likelihood at log-SDs ``(log σ_p, log σ_o)``: the
    fixed effects are integrated out with the random ones (flat prior), the GLMM analogue of
    REML (glmmTMB's ``REML = TRUE``). Maximum likelihood underestimates both variances by
    about the share of parameters in the data (12 cell means among ~100 samples), which
    made ~8% of null contrasts significant at 5%."""
    sd_p, sd_o = np.exp(log_sd)
    params, u_o, pen, W, _ = _mode(successes, trials, Xp, k, sd_p, sd_o, cache["start"])
    cache["start"] = np.concatenate([params, u_o])
    A, d, shrink = _information(Xp, W, k, sd_p, sd_o)
    if reml:
        # log|H| over (β, u): the sample block (diagonal d), then the Schur complement on
        # (β, u_p)
        sign, log_det_a = np.linalg.slogdet(A)
        if sign <= 0:
            return np.inf
    else:  # over u only: the patient block after eliminating the samples is diagonal too
        log_det_a = np.log(np.bincount(patient, weights=shrink, minlength=n_patients)
                           + 1 / sd_p**2).sum()
    log_det = np.log(d).sum() + log_det_a
    value = (pen + const - n_patients * np.log(sd_p) - len(successes) * np.log(sd_o)
             - 0.5 * log_det)
    return -value if np.isfinite(value) else np.inf


def fit_binomial_glmm(successes: np.ndarray, trials: np.ndarray, X: np.ndarray,
                      groups: np.ndarray, *, reml: bool = True
                      ) -> tuple[np.ndarray | None, np.ndarray | None, str, dict]:
    """Fit the binomial GLMM (patient + observation random intercepts, logit link).

    Parameters
    ----------
    successes
        Events in the population, per sample.
    trials
        Events in its parent (or reference), per sample; rows with 0 must be dropped before.
    X
        Fixed-effects design (cell means and covariates), one row per sample.
    groups
        Patient of each sample.
    reml
        Restricted likelihood for the variances (default); False for maximum likelihood
        (lme4's ``glmer(nAGQ = 0)``, for comparison).

    Returns
    -------
    (beta, cov_beta, warning, info)
        Fixed effects (log odds), their covariance, a warning ('' when none: also says when
        a search stopped before converging) and ``{"sd_patient", "sd_sample", "criterion"}``
        (the maximised restricted Laplace criterion, up to a constant; the likelihood with
        ``reml=False``); ``(None, None, reason, {})`` when the model cannot be fitted.
    """
    successes = np.asarray(successes, float)
    trials = np.asarray(trials, float)
    X = np.asarray(X, float)
    _, patient = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_patients = int(patient.max()) + 1
    k = X.shape[1]
    if len(successes) <= k:
        return None, None, f"{FAILED}: {len(successes)} values for {k} parameters", {}
    if np.linalg.matrix_rank(X) < k:
        return None, None, f"{FAILED}: the design is singular", {}
    # Start from least squares on the empirical logit: the mode search then needs few steps.
    elogit = np.log((successes + 0.5) / (trials - successes + 0.5))
    beta0 = np.linalg.lstsq(X, elogit, rcond=None)[0]
    cache = {"start": np.concatenate([beta0, np.zeros(n_patients + len(successes))])}
    const = float(np.sum(special.gammaln(trials + 1) - special.gammaln(successes + 1)
                         - special.gammaln(trials - successes + 1)))
    Xp = np.hstack([X, np.eye(n_patients)[patient]])  # [X | Z_patient], built once
    args = (successes, trials, Xp, k, patient, n_patients, const, cache, reml)
    # A coarse grid first: the Laplace surface can have a ridge at σ → 0, and a
    # local search from one start can stop there.
    grid = [(a, b) for a in (-3.0, -1.0, 0.0) for b in (-3.0, -1.5, -0.5)]
    best = min(grid, key=lambda s: _laplace(np.array(s), *args))
    res = optimize.minimize(_laplace, np.array(best), args=args, method="L-BFGS-B",
                            bounds=[_LOG_SD, _LOG_SD])
    notes = [] if res.success else [f"variance search stopped early ({res.message})"]
    log_sd = res.x
    sd_p, sd_o = np.exp(log_sd)
    params, _, _, W, converged = _mode(successes, trials, Xp, k, sd_p, sd_o, cache["start"])
    beta = params[:k]
    A, _, _ = _information(Xp, W, k, sd_p, sd_o)
    try:
        cov = np.linalg.inv(A)[:k, :k]
    except np.linalg.LinAlgError:
        return None, None, f"{FAILED}: singular information matrix", {}
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(cov))):
        return None, None, f"{FAILED}: non-finite estimates", {}
    if sd_p <= np.exp(_LOG_SD[0]) * 1.01:
        notes.append("patient variance at the boundary (0)")
    if not converged:
        notes.append("the mode search did not converge")
    info = {"sd_patient": float(sd_p), "sd_sample": float(sd_o),
            "criterion": float(-res.fun)}
    return beta, (cov + cov.T) / 2, "; ".join(notes), info


def binomial_glmm_fitter(y: np.ndarray, X: np.ndarray, groups: np.ndarray, *,
                         successes: np.ndarray, trials: np.ndarray):
    """The :data:`~immunoprofile.tl._models.Fitter` form of :func:`fit_binomial_glmm`.

    A cell whose every count is 0 (or equals its parent) has its log odds at ∓∞ and no
    finite maximum likelihood: such readouts, and any the GLMM cannot fit, fall back to the
    empirical-logit LMM (``y``), said in the warning (the ``model`` column keeps the name
    asked for).
    """
    cells = X[:, : _n_cells(X)] > 0.5
    for j in range(cells.shape[1]):
        rows = cells[:, j]
        if rows.any() and (np.all(successes[rows] == 0)
                           or np.all(successes[rows] == trials[rows])):
            beta, cov, note = fit_lmm(y, X, groups)
            why = ("a cell with every count 0 or every count its parent's: no finite "
                   "log odds; fitted as the empirical-logit LMM")
            return beta, cov, f"{note}; {why}" if note else why
    beta, cov, warning, _ = fit_binomial_glmm(successes, trials, X, groups)
    if beta is None:  # e.g. a covariate level whose counts are all 0 (separation)
        beta, cov, note = fit_lmm(y, X, groups)
        why = f"binomial GLMM failed ({warning}): fitted as the empirical-logit LMM"
        return beta, cov, f"{note}; {why}" if note else why
    return beta, cov, warning


def _n_cells(X: np.ndarray) -> int:
    """Leading columns of a cell-means design (0/1, one 1 per row)."""
    k = 0
    total = np.zeros(X.shape[0])
    for j in range(X.shape[1]):
        col = X[:, j]
        if not np.all((col == 0) | (col == 1)) or np.any(total + col > 1):
            break
        total += col
        k += 1
    return k

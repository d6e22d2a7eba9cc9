"""fig3 / fig4: their CSV against the exact references, and the numbers docs/mechanism.md
states about them against exact (sympy / rational) computation."""

from __future__ import annotations

import csv
import math
from fractions import Fraction

import numpy as np
import sympy as sp

from mcsl_core.experiments import run_figure
from tests.mechanism.test_constrained import DEFAULTS, C, U, _scale
from tests.reference import mechanism_ref as ref

#: the CSV prints 10 significant digits: half a unit of the 10th digit, relative
PRINTED = 5e-10


def _check_row(row: dict, P: dict) -> None:
    """One CSV row against the exact optimum at the documented grid point. Error model:
    the printing (PRINTED |y|) plus the kernel's bound of test_constrained.py."""
    constrained = row["model"] == "constrained"
    want = ref.exact_solution(P, constrained)
    assert int(row["valid"]) == int(want["valid"]), (row, P)
    if not want["valid"]:
        assert row["U_s"] == "nan"
        return
    solver = ref.constrained_exact_fractions if constrained else ref.unconstrained_exact_fractions
    scale, cond = _scale(P, want), None
    for y in ref.OUTPUTS:
        err = abs(float(row[y]) - want[y])
        lim = PRINTED * abs(want[y]) + C * U * (abs(want[y]) + scale[y])
        if err > lim:
            cond = cond or ref.condition(P, solver)
            assert err <= lim + C * U * cond[y], (y, row, want, P)
    assert int(row["accepted"]) == int(want["accepted"])


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fig3_and_fig4_outputs(tmp_path, capsys):
    p3 = run_figure("fig3", tmp_path)
    p4 = run_figure("fig4", tmp_path)
    names = sorted(p.name for p in p3 + p4)
    assert names == ["fig3.png", "fig3_diagonal.csv", "fig3_grid.csv", "fig4.csv", "fig4.png"]
    for p in p3 + p4:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "U_s peaks" in out and "U_d peaks" in out and "v* < 0" in out

    rows = _read(tmp_path / "fig3_grid.csv")
    assert len(rows) == 2 * 150 * 150
    axis = np.linspace(0.0, 15.0, 151)[1:]  # the documented grid: 150 points on (0, 15]
    on_grid = lambda x: float(axis[np.argmin(np.abs(axis - float(x)))])  # noqa: E731
    for row in rows[::997]:
        _check_row(row, dict(DEFAULTS, eta=on_grid(row["eta"]), xi=on_grid(row["xi"])))

    rows = _read(tmp_path / "fig4.csv")
    assert len(rows) == 2 * 3 * 1001
    eps_axis = np.linspace(0.0, 1.0, 1001)
    for row in rows[::211]:
        eps = float(eps_axis[np.argmin(np.abs(eps_axis - float(row["eps"])))])
        ex = float(row["eta_equals_xi"])
        _check_row(row, dict(DEFAULTS, eps=eps, eta=ex, xi=ex))
    # constrained: feasible everywhere in the sweep
    con = [r for r in rows if r["model"] == "constrained"]
    assert all(
        0 <= float(r["v"]) <= 50 and 0 <= float(r["s"]) <= 500 and 0 <= float(r["g"]) <= 1 for r in con
    )


# ---------------------------------------------------------------- the docs' numbers, recomputed


def _paper_v_star_in(var: str, **fixed):
    """v* of the paper's model as a sympy expression in one parameter, the others fixed
    at the Section V-A values (exact rationals)."""
    d = ref.derivation()
    names = dict(zip(ref.NAMES, d["symbols"]))
    sub = {names[n]: sp.Rational(*Fraction(DEFAULTS[n]).as_integer_ratio()) for n in ref.NAMES}
    for n, val in fixed.items():
        sub[names[n]] = val
    x = sp.Symbol(var, positive=True)
    if var == "k":  # eta = k, xi = 1: every output depends on eta xi only
        sub[names["eta"]], sub[names["xi"]] = x, sp.Integer(1)
    else:
        sub.pop(names[var])
        sub[names[var]] = x
    v = d["v_star"].subs(d["s"], d["s_star"]).subs(sub)
    return x, sp.together(v), sp.together(d["d2Us_ds2"].subs(sub))


def _real_roots(expr, x, lo, hi):
    num = sp.Poly(sp.numer(sp.together(expr)), x)
    return [r for r in (sp.nsimplify(z) for z in sp.real_roots(num)) if lo < float(r) < hi]


def test_documented_sign_change_of_paper_v_star():
    """docs: at eps = 0.9 the paper's v* < 0 for eta xi > 66.4, i.e. eta = xi > 8.15 on the
    diagonal (the sign change lies between 8.14 and 8.15, at eta xi = 66.4187); at
    eta = xi = 5, v* < 0 for eps < 0.7676 (the exact root; the 1001-point Fig. 4 grid's
    last negative point is eps = 0.767); U_s is convex along the rule for eps < 0.047
    there (root 0.04669)."""
    x, v, _ = _paper_v_star_in("k")
    (k0,) = _real_roots(v, x, 1.0, 1e4)
    assert round(float(k0), 1) == 66.4 and 8.14**2 < float(k0) < 8.15**2
    assert v.subs(x, sp.Rational(8.14) ** 2) > 0 > v.subs(x, sp.Rational(8.15) ** 2)
    x, v, d2 = _paper_v_star_in("eps", eta=sp.Integer(5), xi=sp.Integer(5))
    roots = _real_roots(v, x, 0.047, 1.0)
    assert [round(float(r), 4) for r in roots] == [0.7676]
    (e0,) = _real_roots(d2, x, 0.0, 1.0)
    assert round(float(e0), 3) == 0.047
    assert d2.subs(x, sp.Rational(1, 100)) > 0 > d2.subs(x, sp.Rational(1, 10))


def test_documented_values_exact():
    """The numbers docs/mechanism.md prints, from the exact references (not from solve)."""
    paper = ref.exact_solution(DEFAULTS, False)
    assert (round(paper["s"], 4), round(paper["v"], 4), round(paper["U_s"], 5), round(paper["U_d"], 5)) == (
        7.4584,
        0.0723,
        0.01667,
        0.01040,
    )
    assert round(ref.exact_solution(dict(DEFAULTS, eta=12.0, xi=12.0), False)["v"], 4) == -0.0217
    assert ref.exact_solution(dict(DEFAULTS, eta=12.0, xi=12.0), True)["v"] == 0.0
    # constrained plateau from eta = xi = 8.0914 on (exact threshold, found by bisection
    # of the exact reference): v = 0, U_s = 0.00911, U_d = 0.00641
    for ex in (8.0915, 8.15, 10.0, 15.0):
        con = ref.exact_solution(dict(DEFAULTS, eta=ex, xi=ex), True)
        assert con["v"] == 0.0 and round(con["U_s"], 5) == 0.00911 and round(con["U_d"], 5) == 0.00641
    assert ref.exact_solution(dict(DEFAULTS, eta=8.0914, xi=8.0914), True)["v"] > 0
    # U_s jumps to its maximum 0.597 just above eta xi = 1 (both models), no trade below
    for constrained in (False, True):
        assert round(ref.exact_solution(dict(DEFAULTS, eta=1 + 1e-9, xi=1.0), constrained)["U_s"], 3) == 0.597
        assert not ref.exact_solution(dict(DEFAULTS, eta=1.0, xi=1.0), constrained)["valid"]
    # U_d peaks at 0.0761 at eta xi = 1.5 (paper's model, the diagonal of the grid)
    ud = [ref.exact_solution(dict(DEFAULTS, eta=k, xi=1.0), False)["U_d"] for k in (1.4, 1.5, 1.6)]
    assert round(ud[1], 4) == 0.0761 and ud[1] > max(ud[0], ud[2])
    assert not math.isnan(ud[1])

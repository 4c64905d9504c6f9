"""simpleNN's size symbols as SymPy symbols, and the printers of the course's notation.

Every symbol is a positive integer (the padding p^m may be 0). The derived sizes (a^m_pad,
a^m_conv, a^{m+1}, n^m, ...) are symbols of their own, so that cost expressions and their
leading terms read like the slides (``I h^m h^m d^m a^m_conv b^m_conv``); `DEFINITIONS` binds
each to its expression in the base symbols and `to_base` substitutes them.

Plain text names are the symbols' names (``a^m_conv``, ``d^{m+1}``); LaTeX names are those of
the slides (``a^{m}_{\\mathrm{conv}}``, ``d^{m+1}``), printed by ``sympy.latex`` as well.
"""

from __future__ import annotations

from types import SimpleNamespace

import sympy as sp


class CourseSymbol(sp.Symbol):
    """A size symbol that prints in LaTeX as in the course slides."""

    def _latex(self, printer) -> str:
        return LATEX_NAMES[self.name]


LATEX_NAMES: dict[str, str] = {}


def _symbol(name: str, latex: str, **assumptions) -> CourseSymbol:
    LATEX_NAMES[name] = latex
    return CourseSymbol(name, integer=True, **(assumptions or {"positive": True}))


# -- base symbols ----------------------------------------------------------------------------
I = _symbol("I", "I")  # instances in the mini-batch
a = _symbol("a^m", "a^{m}")  # input height of layer m
b = _symbol("b^m", "b^{m}")  # input width
d = _symbol("d^m", "d^{m}")  # input channels
h = _symbol("h^m", "h^{m}")  # filter width (square filters)
p = _symbol("p^m", "p^{m}", nonnegative=True)  # zeros added on each border
s = _symbol("s^m", "s^{m}")  # stride
h_pool = _symbol("h^m_pool", r"h^{m}_{\mathrm{pool}}")  # width of the max-pooling window
d_next = _symbol("d^{m+1}", "d^{m+1}")  # filters = output channels
n_next = _symbol("n^{m+1}", "n^{m+1}")  # units of full layer m
n_loss = _symbol("n^{L+1}", "n^{L+1}")  # outputs of the network = input of the loss
w = _symbol("w_dtype", r"w_{\mathrm{dtype}}")  # bytes per element of the network's dtype
w_idx = _symbol("w_idx", r"w_{\mathrm{idx}}")  # bytes per element of an index array (intp)
# extended vocabulary (ARCH_FORMAT.md): padding per border ("same" may differ), groups, the
# pooling window's stride and ceil mode (1) or floor mode (0)
p_top = _symbol("p^m_top", r"p^{m}_{\mathrm{top}}", nonnegative=True)
p_bottom = _symbol("p^m_bottom", r"p^{m}_{\mathrm{bottom}}", nonnegative=True)
p_left = _symbol("p^m_left", r"p^{m}_{\mathrm{left}}", nonnegative=True)
p_right = _symbol("p^m_right", r"p^{m}_{\mathrm{right}}", nonnegative=True)
g = _symbol("g^m", "g^{m}")  # groups of a conv layer
s_pool = _symbol("s^m_pool", r"s^{m}_{\mathrm{pool}}")  # stride of the pooling window
c_pool = _symbol("c^m_pool", r"c^{m}_{\mathrm{pool}}", nonnegative=True)  # ceil mode: 1, floor mode: 0

# -- derived symbols -------------------------------------------------------------------------
a_pad = _symbol("a^m_pad", r"a^{m}_{\mathrm{pad}}")
b_pad = _symbol("b^m_pad", r"b^{m}_{\mathrm{pad}}")
a_conv = _symbol("a^m_conv", r"a^{m}_{\mathrm{conv}}")
b_conv = _symbol("b^m_conv", r"b^{m}_{\mathrm{conv}}")
a_next = _symbol("a^{m+1}", "a^{m+1}")  # pooled height
b_next = _symbol("b^{m+1}", "b^{m+1}")
n = _symbol("n^m", "n^{m}")  # inputs of full layer m
d_g = _symbol("d^m/g^m", r"\tfrac{d^{m}}{g^{m}}")  # input channels per group: what each filter sees


def _pooled(size: sp.Expr) -> sp.Expr:
    """Outputs of the pooling window h_pool with stride s_pool along `size` elements: floor
    ((size - h_pool)/s_pool) + 1, or in ceil mode (c_pool = 1) ceil(...) + 1 without a window
    that would start past the end (docs/arch-format.md); `size` itself without pooling
    (h_pool = s_pool = 1)."""
    return sp.Min(sp.floor((size - h_pool + c_pool * (s_pool - 1)) / s_pool), sp.floor((size - 1) / s_pool)) + 1


_A_CONV = sp.floor((a + p_top + p_bottom - h) / s) + 1
_B_CONV = sp.floor((b + p_left + p_right - h) / s) + 1

#: the derived sizes in the base symbols (ARCH_FORMAT.md, "Sizes"; the padding per border,
#: which is p^m on each for a symmetric padding)
DEFINITIONS: dict[CourseSymbol, sp.Expr] = {
    a_pad: a + p_top + p_bottom,
    b_pad: b + p_left + p_right,
    a_conv: _A_CONV,
    b_conv: _B_CONV,
    a_next: _pooled(_A_CONV),
    b_next: _pooled(_B_CONV),
    n: d * a * b,
    d_g: d / g,
}

WIDTHS = (w, w_idx)

#: the sizes as the cost functions of costmodel.model.costs read them (x.I, x.a_conv, ...):
#: each attribute is the symbol of the same name (costmodel.model.step.SIZE_FIELDS gives the
#: numbers)
SIZES = SimpleNamespace(I=I, a=a, b=b, d=d, h=h, p=p, s=s, h_pool=h_pool, d_next=d_next, n_next=n_next,
                        n_loss=n_loss, w=w, w_idx=w_idx, a_pad=a_pad, b_pad=b_pad, a_conv=a_conv,
                        b_conv=b_conv, a_next=a_next, b_next=b_next, n=n, p_top=p_top, p_bottom=p_bottom,
                        p_left=p_left, p_right=p_right, g=g, s_pool=s_pool, c_pool=c_pool, d_g=d_g)

#: order of the factors in a printed monomial, as the slides write them
_ORDER = (w, w_idx, I, h, h_pool, d, d_g, d_next, n, n_next, n_loss, a, b, a_pad, b_pad, a_conv, b_conv,
          a_next, b_next, p, s, g, p_top, p_bottom, p_left, p_right, s_pool, c_pool)
_RANK = {sym: i for i, sym in enumerate(_ORDER)}


def to_base(expr: sp.Expr) -> sp.Expr:
    """`expr` with every derived size replaced by its definition in the base symbols."""
    return sp.sympify(expr).xreplace(DEFINITIONS)


# -- leading order ---------------------------------------------------------------------------

def _degree(term: sp.Expr) -> int:
    powers = term.as_powers_dict()
    degree = 0
    for base, exp in powers.items():
        if base.is_Number or base in WIDTHS:
            continue
        if not (isinstance(base, CourseSymbol) and exp.is_Integer and exp > 0):
            raise ValueError(f"{term} is not a monomial in the size symbols")
        degree += int(exp)
    return degree


def leading_term(expr: sp.Expr) -> sp.Expr:
    """The highest-degree monomial(s) of the expanded `expr` in the size symbols.

    The widths (bytes per element) count as coefficients, each derived size (a^m_conv, ...)
    as one symbol: the leading term of the FLOPs of W^m phi is 2 I h^m h^m d^m d^{m+1}
    a^m_conv b^m_conv.
    """
    terms = sp.Add.make_args(sp.expand(expr))
    top = max(_degree(t) for t in terms)
    return sp.Add(*(t for t in terms if _degree(t) == top))


def big_o(expr: sp.Expr) -> sp.Expr:
    """The leading monomial(s) of `expr` without coefficients or widths: what O(.) holds."""
    lead = leading_term(expr)
    if lead == 0:
        return lead
    monomials = []
    for term in sp.Add.make_args(lead):
        monomial = term.as_coeff_Mul()[1].xreplace({width: 1 for width in WIDTHS})
        if monomial not in monomials:
            monomials.append(monomial)
    return sp.Add(*monomials)


# -- printing in the course's notation -------------------------------------------------------

def _factors(term: sp.Expr) -> tuple[sp.Integer, list[tuple[sp.Symbol, int]]]:
    coeff, rest = term.as_coeff_Mul()
    powers = [(base, int(exp)) for base, exp in rest.as_powers_dict().items() if base != 1]
    powers.sort(key=lambda be: (_RANK.get(be[0], len(_RANK)), be[0].name))
    return coeff, powers


def _monomial(term: sp.Expr, name, times: str) -> str:
    coeff, powers = _factors(term)
    names = [name(base) for base, exp in powers for _ in range(exp)]
    if coeff == -1 and names:
        return "-" + times.join(names)
    if coeff != 1 or not names:
        names.insert(0, str(coeff))
    return times.join(names)


def _sorted_terms(expr: sp.Expr) -> list[sp.Expr]:
    terms = sp.Add.make_args(sp.expand(expr))

    def key(term):
        _, powers = _factors(term)
        return (-_degree(term), [(_RANK.get(base, len(_RANK)), -exp) for base, exp in powers])

    return sorted(terms, key=key)


def _print(expr: sp.Expr, name, times: str, group: str) -> str:
    expr = sp.expand(sp.sympify(expr))
    if expr == 0:
        return "0"
    by_width = sp.collect(expr, WIDTHS, evaluate=False)
    parts = []
    for width in (*WIDTHS, sp.S.One):
        inner = by_width.get(width)
        if inner is None:
            continue
        terms = _sorted_terms(inner)
        if width == 1:
            parts.extend(_monomial(t, name, times) for t in terms)
        elif len(terms) == 1:
            parts.append(_monomial(terms[0] * width, name, times))
        else:
            inside = " + ".join(_monomial(t, name, times) for t in terms)
            parts.append(group.format(name(width), inside))
    return " + ".join(parts).replace("+ -", "- ")


def to_text(expr: sp.Expr) -> str:
    """Plain text in the course's notation: ``2 I h^m h^m d^m d^{m+1} a^m_conv b^m_conv``."""
    return _print(expr, lambda sym: sym.name, " ", "{} ({})")


def to_latex(expr: sp.Expr) -> str:
    """LaTeX as in the slides: ``2 I h^{m} h^{m} d^{m} d^{m+1} a^{m}_{\\mathrm{conv}} ...``."""
    return _print(expr, lambda sym: LATEX_NAMES[sym.name], " ", r"{} \left({}\right)")


def order_text(expr: sp.Expr) -> str:
    """``O(...)`` of `expr` in plain text; ``0`` for an op that costs nothing of it (pad's FLOPs),
    as its exact count says, not ``O(0)``."""
    order = big_o(expr)
    return "0" if order == 0 else f"O({to_text(order)})"


def order_latex(expr: sp.Expr) -> str:
    r"""``\mathcal{O}(...)`` of `expr` in LaTeX; ``0`` for 0."""
    order = big_o(expr)
    return "0" if order == 0 else rf"\mathcal{{O}}({to_latex(order)})"

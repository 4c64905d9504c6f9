"""The notation of the ops that several layer kinds share (batch normalization, dropout, the sum
of a residual block's two gradients): plain text, matplotlib mathtext and the LaTeX of the
slides' style, as keyword arguments of costmodel.model.records.op. $m is layer m's superscript,
$n layer m+1's."""

from __future__ import annotations

_DS = r"\frac{\partial f}{\partial S^{m}}"

#: BN(S^m) = gamma^m (S^m - mu^m) / sqrt(sigma^{m 2} + eps) + beta^m, the statistics mu^m and
#: sigma^{m 2} of each row of S^m over the mini-batch (and a conv layer's positions)
BATCH_NORM = dict(
    text="BN(S$m) = gamma$m (S$m - mu$m)/sigma$m + beta$m",
    mathtext=r"\mathrm{BN}(S$m)",
    latex=r"\gamma^{m} \frac{S^{m,i} - \mu^{m}}{\sqrt{(\sigma^{m})^{2} + \epsilon}} + \beta^{m}")
BATCH_NORM_GRAD = dict(
    text="BN'(S$m): dgamma$m, dbeta$m, dS$m",
    mathtext=r"\mathrm{BN}'(S$m)",
    latex=r"\frac{\partial f}{\partial \gamma^{m}},\ \frac{\partial f}{\partial \beta^{m}},\ " + _DS)
#: inverted dropout with the keep mask M^m of rate r^m
DROPOUT = dict(
    text="Z$n * M$m / (1 - r$m)",
    mathtext=r"Z$n \odot M$m / (1 - r$m)",
    latex=r"Z^{m+1,i} \odot M^{m,i} / (1 - r^{m})")
DROPOUT_GRAD = dict(
    text="dZ$n * M$m / (1 - r$m)",
    mathtext=r"dZ$n \odot M$m / (1 - r$m)",
    latex=r"\frac{\partial f}{\partial Z^{m+1}} \odot M^{m} / (1 - r^{m})")
#: the output of layer m is a residual block's input X: F's gradient plus the shortcut's
RESIDUAL_ADD_GRAD = dict(
    text="dZ$n (from F) + dZ$n (from the shortcut)",
    mathtext=r"dZ$n_F + dZ$n_{\mathrm{short}}",
    latex=r"\frac{\partial f}{\partial Z^{m+1}}\Big|_{F} + \frac{\partial f}{\partial Z^{m+1}}\Big|_{\mathrm{shortcut}}")

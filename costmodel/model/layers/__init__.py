"""The op records of every layer kind, each module registering its ops in step order
(importing this package registers them all; costmodel.model.ops.records does)."""

from costmodel.model.layers import conv, full, global_avg_pool, residual_add, loss  # noqa: F401  (register the records, in this order)

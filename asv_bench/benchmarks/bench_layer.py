"""The layer, ``bnfast.BatchNorm``: a training step (forward then backward) and eval forward.

Every call allocates its output, as the layer does; float32 parameters and inputs.
"""

from .common import SHAPE_LAYOUTS, THREADS, Inputs

try:
    from bnfast import BatchNorm
except ImportError:  # a commit before the layer existed
    BatchNorm = None


class Layer:
    """``BatchNorm(C, axis=...)`` in training mode (forward, backward) and in eval mode."""

    params = [SHAPE_LAYOUTS, THREADS]
    param_names = ["shape_layout", "n_threads"]

    def setup(self, shape_layout, n_threads):
        if BatchNorm is None:
            raise NotImplementedError("bnfast.BatchNorm does not exist at this commit")
        shape, layout = shape_layout
        self.d = d = Inputs(shape, layout, "float32", "batch_norm_backward")
        self.layer = BatchNorm(shape[1], axis=d.axis, n_threads=n_threads)
        self.eval_layer = BatchNorm(shape[1], axis=d.axis, n_threads=n_threads).eval()
        self.layer.forward(d.x)  # the state backward differentiates

    def time_forward_train(self, shape_layout, n_threads):
        self.layer.forward(self.d.x)

    def time_backward(self, shape_layout, n_threads):
        self.layer.backward(self.d.dy)

    def time_forward_eval(self, shape_layout, n_threads):
        self.eval_layer.forward(self.d.x)

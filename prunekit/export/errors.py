"""ExportError: a model could not be exported or its export does not match eager PyTorch."""
from ..errors import PrunekitError


class ExportError(PrunekitError):
    """Export to ONNX / TorchScript failed, or the exported model disagrees with the eager model."""

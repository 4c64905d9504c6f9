"""Importers: a network written elsewhere, mapped onto the architecture file's vocabulary.

- ``costmodel.importers.torchmodule``: a PyTorch module (``model.py:factory`` or
  ``model.py:ClassName``), traced with torch.fx (torch.export when fx cannot trace it); its
  graph mapped by ``fx_map`` (each call's kind: ``fx_ops``);
- ``costmodel.importers.onnxfile``: an ONNX file, parsed with the ``onnx`` package and never run
  (its operators: ``onnx_ops``);
- ``costmodel.importers.graph``: what both produce (a small graph of the ops the format knows,
  with the shapes of their outputs) and its walk; ``costmodel.importers.fold``: the one mapping
  of that graph onto the file's layers;
- ``costmodel.importers.source``: the ``costmodel import`` command's work (the arch.yaml text,
  commented with its source, checked to round-trip).

simpleNN's ``.config`` files are read by costmodel.model.simplenn (plain data, no extra needed).

torch and onnx are optional extras, imported only inside these modules and only when a module
or an ONNX file is imported: the predict path of an arch.yaml never imports them (docs/import.md).
"""

"""The ONNX export: one model's graph exported once, without its weights, then laid out again for each model.

torch.onnx's exporter traces one model (one network, not the ensemble) and its optimiser simplifies the graph with
the weights held as graph inputs, so that nothing in the result depends on their values: no weight is folded,
fused or merged. That template takes any weights of the same shapes; the file holds one copy of its nodes per model,
each reading that model's weights, and ONNX's Mean of their probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from burrscope.inference.torchscript import INPUT, OUTPUT

STACK_TRACE = "pkg.torch.onnx.stack_trace"
TEMPLATE_PREFIX = "models.0."  # a one-model Probabilities names its weights so; member k's are models.<k>.*


def without_stack_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ONNX model without the Python stack trace the exporter records on each node: it names this checkout's
    files, so the same model exported from two clones would differ."""
    for node in [*model.graph.node, *(node for function in model.functions for node in function.node)]:
        kept = [entry for entry in node.metadata_props if entry.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def export_template(member: nn.Module, example: torch.Tensor) -> bytes:
    """`member` (one model's probabilities) as an ONNX graph whose inputs are the image and then its weights."""
    import onnxscript.optimizer  # the exporter's own optimiser; only a template build pays for importing it

    # The torch.export-based exporter (needs onnxscript): the TorchScript-based one is deprecated since 2.9.
    program = torch.onnx.export(
        member.eval(),
        (example,),
        dynamo=True,
        optimize=False,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
    model = program.model_proto
    weights = set(member.state_dict())
    graph = model.graph
    slots = [tensor for tensor in graph.initializer if tensor.name in weights]
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in slots)
    constants = [tensor for tensor in graph.initializer if tensor.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(constants)  # what the graph computes with besides the weights (mean, std, shapes)
    return without_stack_traces(onnxscript.optimizer.optimize(model)).SerializeToString(deterministic=True)


def weight_slots(template: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    """The template's weight inputs: name (without models.0.) -> shape and ONNX element type."""
    return {
        slot.name.removeprefix(TEMPLATE_PREFIX): (
            [dim.dim_value for dim in slot.type.tensor_type.shape.dim],
            slot.type.tensor_type.elem_type,
        )
        for slot in template.graph.input[1:]
    }


def check_template(template: onnx.ModelProto, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless the template takes the image and then weights that `state` has, in its shapes."""
    graph = template.graph
    if [i.name for i in graph.input[:1]] != [INPUT] or [o.name for o in graph.output] != [OUTPUT]:
        raise ValueError(f"inputs {[i.name for i in graph.input[:1]]}, outputs {[o.name for o in graph.output]}")
    for name, (shape, elem_type) in weight_slots(template).items():
        tensor = state.get(name)
        if tensor is None or list(tensor.shape) != shape:
            raise ValueError(f"weight {name}: {shape} in the template, {None if tensor is None else tensor.shape}")
        if helper.np_dtype_to_tensor_dtype(tensor.detach().cpu().numpy().dtype) != elem_type:
            raise ValueError(f"weight {name}: element type {elem_type} in the template, {tensor.dtype}")


def compose_onnx(template: onnx.ModelProto, weights: Sequence[Mapping[str, torch.Tensor]]) -> bytes:
    """The ONNX file: the template's nodes once per state dict of `weights`, each member's weights as initializers
    (`models.<k>.<name>`), and the Mean of the members' probabilities as the output."""
    graph = template.graph
    slots = weight_slots(template)
    shared = {INPUT, "", *(tensor.name for tensor in graph.initializer)}
    model = onnx.ModelProto()
    model.CopyFrom(template)
    out = model.graph
    del out.node[:], out.input[1:], out.output[:], out.value_info[:]
    for k, state in enumerate(weights):

        def renamed(name: str, k: int = k) -> str:
            if name in shared:
                return name
            if name.startswith(TEMPLATE_PREFIX) and name.removeprefix(TEMPLATE_PREFIX) in slots:
                return f"models.{k}.{name.removeprefix(TEMPLATE_PREFIX)}"
            return f"m{k}/{name}"

        for source in graph.node:
            node = out.node.add()
            node.CopyFrom(source)
            node.name = f"m{k}/{source.name}"
            node.input[:] = [renamed(name) for name in source.input]
            node.output[:] = [renamed(name) for name in source.output]
        for source in graph.value_info:
            info = out.value_info.add()
            info.CopyFrom(source)
            info.name = renamed(source.name)
        for name in slots:
            out.initializer.append(numpy_helper.from_array(state[name].detach().cpu().numpy(), f"models.{k}.{name}"))
    members = [f"m{k}/{OUTPUT}" for k in range(len(weights))]
    out.node.append(helper.make_node("Mean", members, [OUTPUT], name="mean_of_models"))
    out.output.extend(graph.output)
    return model.SerializeToString(deterministic=True)


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime  # only the parity check runs ONNX

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one core, beside the TorchScript check on the other (export.write_checked)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images.numpy()})[0]

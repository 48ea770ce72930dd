"""The one vocabulary of logical axis names and the default rules mapping them to mesh axes.

Models name every parameter and block-boundary activation with these logical axes; configs map
them to the mesh axes ("data", "fsdp", "tensor") with `config.axis_rules`.
"""
MESH_AXES = ("data", "fsdp", "tensor")

# Logical axes used by the models.
BATCH = "batch"            # examples
LENGTH = "length"          # image token positions
TEXT_LENGTH = "text_length"
EMBED = "embed"            # transformer hidden size
TEXT_EMBED = "text_embed"  # width of the text encoder's states
MLP = "mlp"
HEADS = "heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
LAYERS = "layers"          # stacked layers under nn.scan
CONV_IN = "conv_in"
CONV_OUT = "conv_out"

LOGICAL_AXES = (BATCH, LENGTH, TEXT_LENGTH, EMBED, TEXT_EMBED, MLP, HEADS, HEAD_DIM, VOCAB,
                LAYERS, CONV_IN, CONV_OUT)

# FSDP shards the embed dimension of weights over "fsdp"; tensor parallelism splits heads, MLP and
# vocabulary over "tensor" (Megatron style); the batch is split over data and fsdp.
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (TEXT_LENGTH, None),
    (EMBED, "fsdp"),
    (TEXT_EMBED, None),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (HEAD_DIM, None),
    (VOCAB, "tensor"),
    (LAYERS, None),
    (CONV_IN, None),
    (CONV_OUT, "tensor"),
)


def rules_from_config(rules) -> tuple:
  """Validates config axis rules (a sequence of (logical, mesh axis | tuple | None)) and freezes them."""
  out = []
  for entry in rules:
    if len(entry) != 2:
      raise ValueError(f"axis_rules entry {entry!r} must be a (logical_axis, mesh_axes) pair")
    logical, mesh = entry
    if logical not in LOGICAL_AXES:
      raise ValueError(f"axis_rules names unknown logical axis {logical!r}; known: {LOGICAL_AXES}")
    mesh_t = () if mesh is None else ((mesh,) if isinstance(mesh, str) else tuple(mesh))
    for m in mesh_t:
      if m not in MESH_AXES:
        raise ValueError(f"axis_rules maps {logical!r} to unknown mesh axis {m!r}; mesh axes are {MESH_AXES}")
    out.append((logical, None if mesh is None else (mesh if isinstance(mesh, str) else tuple(mesh))))
  return tuple(out)

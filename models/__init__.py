"""Model folders (checkpoints/, loras/, …) and, in ``models.tools``, the builders of tiny test models."""

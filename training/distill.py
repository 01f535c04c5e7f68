"""Knowledge distillation for `edgekit train --teacher CKPT`: the student learns the teacher's softened outputs.

Loss (Hinton et al., 2015): ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) *
hard-label loss``. T^2 keeps the soft-target gradients on the scale of the hard ones as T changes. For a
one-logit (binary) model the soft targets are ``sigmoid(teacher / T)`` under binary cross-entropy.

The teacher can differ from the student in input size, colour planes and normalisation (a 224x224 RGB
ImageNet network teaching a 28x28 grey CNN): each training batch, already augmented and normalised for the
student, is turned back into pixels, converted to the teacher's planes, resized (bilinear) and normalised
for the teacher. The teacher therefore sees the same augmented image the student sees. Labels must be the
same set; a different order is mapped.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import BadInputError
from edgekit.core.spec import ModelSpec


class Distiller:
    def __init__(self, teacher, teacher_spec: ModelSpec, student_spec: ModelSpec, temperature: float, alpha: float,
                 hard_loss, source: str = ""):
        if set(teacher_spec.labels) != set(student_spec.labels) or teacher_spec.binary != student_spec.binary:
            raise BadInputError(f"--teacher {source}: its labels {list(teacher_spec.labels)[:5]}"
                                f"{'...' if len(teacher_spec.labels) > 5 else ''} (binary={teacher_spec.binary}) "
                                f"are not the student's {list(student_spec.labels)[:5]} (binary={student_spec.binary})")
        if teacher_spec.binary and teacher_spec.labels != student_spec.labels:
            raise BadInputError(f"--teacher {source}: its positive label differs from the student's")
        self.teacher = teacher.eval()
        self.teacher_spec, self.student_spec = teacher_spec, student_spec
        self.order = [teacher_spec.labels.index(label) for label in student_spec.labels]
        self.temperature, self.alpha, self.hard_loss, self.source = temperature, alpha, hard_loss, source

    @classmethod
    def from_checkpoint(cls, path: str, student_spec: ModelSpec, temperature: float, alpha: float, hard_loss):
        from edgekit.models.checkpoint import load_checkpoint
        from edgekit.models.loading import load_model

        ckpt = load_checkpoint(path)
        if ckpt.spec.dtype != "float32" or ckpt.spec.layout not in ("NCHW", "NCTHW"):
            raise BadInputError(f"--teacher {path}: a float NCHW (or NCTHW clip) checkpoint is needed")
        t, s = ckpt.spec, student_spec
        if t.task != s.task or (t.clip_frames, t.frame_stride) != (s.clip_frames, s.frame_stride):
            raise BadInputError(f"--teacher {path}: a {t.task} model ({t.clip_frames} frames, stride {t.frame_stride}) "
                                f"cannot teach a {s.task} model ({s.clip_frames} frames, stride {s.frame_stride}): "
                                "the teacher must see what the student sees")
        return cls(load_model(ckpt), ckpt.spec, student_spec, temperature, alpha, hard_loss, source=str(path))

    def teacher_input(self, x):
        """The student's normalised batch (images N x C x H x W, or clips N x C x T x H x W) as the teacher's."""
        import torch
        import torch.nn.functional as F

        s, t = self.student_spec, self.teacher_spec
        shape = (1, -1) + (1,) * (x.dim() - 2)  # per-channel values against axis 1

        def per_channel(values):
            return torch.tensor(values).view(shape)

        pixels = x * per_channel(s.std) + per_channel(s.mean)
        pixels = pixels / (s.scale * 255.0)  # back to [0, 1] whatever the scale convention
        if s.channels == 1 and t.channels == 3:
            pixels = pixels.expand(-1, 3, *pixels.shape[2:])
        elif s.channels == 3 and t.channels == 1:
            rgb = pixels if s.color == "RGB" else pixels.flip(1)
            pixels = (rgb * per_channel([0.299, 0.587, 0.114])).sum(1, keepdim=True)
        elif s.channels == 3 and s.color != t.color:
            pixels = pixels.flip(1)  # RGB <-> BGR
        if tuple(pixels.shape[-2:]) != tuple(t.input_size):
            size = (*pixels.shape[2:-2], *t.input_size)  # clips keep their frames
            pixels = F.interpolate(pixels, size=size, mode="bilinear" if x.dim() == 4 else "trilinear",
                                   align_corners=False)
        pixels = pixels * (t.scale * 255.0)
        return (pixels - per_channel(t.mean)) / per_channel(t.std)

    def __call__(self, x, logits, targets):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            soft = self.teacher(self.teacher_input(x))[:, self.order] / self.temperature
        student = logits / self.temperature
        if self.student_spec.binary:
            kd = F.binary_cross_entropy_with_logits(student, torch.sigmoid(soft))
        else:
            kd = F.kl_div(F.log_softmax(student, 1), F.log_softmax(soft, 1), log_target=True, reduction="batchmean")
        return self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * self.hard_loss(logits, targets)

    def describe(self) -> dict:
        from edgekit.core.spec import sha256_file

        return {"teacher": self.source, "teacher_sha256": sha256_file(self.source) if Path(self.source).is_file() else "",
                "teacher_arch": self.teacher_spec.arch, "temperature": self.temperature, "alpha": self.alpha}

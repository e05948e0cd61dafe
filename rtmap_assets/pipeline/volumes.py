"""What the imaging stage hands to the dosimetry stage: volumes and masks on one working grid.

Everything lives on the planning image's working grid (rule 3): the planning image, the
dose resampled onto it, the planning structures rasterised onto it, and the relapse structures
mapped into it through the registration. On disk this is a folder of NIfTI files plus an index
(`volumes.json`), so the dosimetry stage can run in another process without redoing the imaging.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import SimpleITK as sitk

Space = Literal["planning", "mapped"]
Role = Literal["ctv", "recurrence", "landmark", "comparison", "organ", "body", "other"]


@dataclass
class StructureMask:
    name: str  # structure name as written in the RTSTRUCT
    role: Role
    space: Space  # "planning": drawn on the planning CT; "mapped": drawn on relapse, mapped to planning
    mask: sitk.Image  # uint8 0/1 on the working grid
    matched_alias: str | None = None


@dataclass
class PatientVolumes:
    patient_id: str
    image: sitk.Image  # planning image on the working grid (HU, float32)
    dose: sitk.Image | None  # Gy, float32, on the same grid; None if the patient has no RTDOSE
    structures: list[StructureMask] = field(default_factory=list)
    # uint8 mask of the working-grid voxels inside the RTDOSE's own extent (the resampled dose is 0
    # beyond it); None = the dose covers the whole grid. Lets dosimetry flag "outside the dose grid".
    dose_support: sitk.Image | None = None

    def find(self, role: Role, space: Space | None = None) -> list[StructureMask]:
        return [s for s in self.structures if s.role == role and (space is None or s.space == space)]

    def save(self, folder: Path) -> dict[str, str]:
        """Write NIfTI files + index; returns {key: path} for the tables. Caller makes it atomic."""
        folder = Path(folder)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        paths: dict[str, str] = {}
        sitk.WriteImage(self.image, str(folder / "planning_image.nii.gz"), useCompression=True)
        paths["planning_image"] = str(folder / "planning_image.nii.gz")
        if self.dose is not None:
            sitk.WriteImage(self.dose, str(folder / "dose.nii.gz"), useCompression=True)
            paths["dose"] = str(folder / "dose.nii.gz")
        if self.dose_support is not None:
            sitk.WriteImage(self.dose_support, str(folder / "dose_support.nii.gz"), useCompression=True)
            paths["dose_support"] = str(folder / "dose_support.nii.gz")
        index = []
        for i, s in enumerate(self.structures):
            fname = f"masks/{s.space}_{i:02d}_{_safe(s.name)}.nii.gz"
            sitk.WriteImage(s.mask, str(folder / fname), useCompression=True)
            paths[f"{s.space}:{s.name}"] = str(folder / fname)
            index.append({"name": s.name, "role": s.role, "space": s.space,
                          "matched_alias": s.matched_alias, "file": fname})
        (folder / "volumes.json").write_text(json.dumps(
            {"patient_id": self.patient_id, "has_dose": self.dose is not None,
             "has_dose_support": self.dose_support is not None, "structures": index}, indent=1))
        return paths

    @classmethod
    def load(cls, folder: Path) -> "PatientVolumes":
        folder = Path(folder)
        meta = json.loads((folder / "volumes.json").read_text())
        image = sitk.ReadImage(str(folder / "planning_image.nii.gz"), sitk.sitkFloat32)
        dose = sitk.ReadImage(str(folder / "dose.nii.gz"), sitk.sitkFloat32) if meta["has_dose"] else None
        structures = [
            StructureMask(name=s["name"], role=s["role"], space=s["space"], matched_alias=s["matched_alias"],
                          mask=sitk.ReadImage(str(folder / s["file"]), sitk.sitkUInt8))
            for s in meta["structures"]
        ]
        support = (sitk.ReadImage(str(folder / "dose_support.nii.gz"), sitk.sitkUInt8)
                   if meta.get("has_dose_support") else None)
        return cls(patient_id=meta["patient_id"], image=image, dose=dose, structures=structures, dose_support=support)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]

"""Wrap a chest X-ray picture (PNG or JPEG) in a DX DICOM file with a made-up patient, to
try ``pneumo dicom-listen`` with a PACS before real studies flow (docs/integration.md).

    python scripts/xray_to_dicom.py chest.png chest.dcm
    python scripts/xray_to_dicom.py chest.png chest.dcm --patient-name "Test^Ada" --patient-id T-1

Every file gets new Study, Series and SOP Instance UIDs. The patient is invented: never
put a real patient's name on a test file.
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def xray_dataset(pixels: np.ndarray, patient_name: str, patient_id: str) -> Dataset:
    """An 8-bit MONOCHROME2 DX image (PA chest) of ``pixels`` for the made-up patient."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    now = dt.datetime.now()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ""
    ds.AccessionNumber, ds.StudyID = "", "1"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.StudyDescription = "Chest X-ray (test file)"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a chest X-ray as PNG or JPEG")
    parser.add_argument("out", help="the DICOM file to write")
    parser.add_argument("--patient-name", default="Test^Pneumo", help="made up, never real")
    parser.add_argument("--patient-id", default="PNEUMO-TEST-1", help="made up, never real")
    args = parser.parse_args(argv)
    with Image.open(args.image) as image:
        pixels = np.asarray(image.convert("L"))
    ds = xray_dataset(pixels, args.patient_name, args.patient_id)
    pydicom.dcmwrite(args.out, ds, enforce_file_format=True)
    print(f"{args.out}: DX {pixels.shape[1]} x {pixels.shape[0]}, patient "
          f"{args.patient_name} ({args.patient_id}), study {ds.StudyInstanceUID}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Valid, reproducible DICOM instances for real IDC index rows (sandbox origin data).

Same series row and seed -> same bytes: UIDs are derived from the crdc UUIDs,
dates are fixed, pixels come from a seeded generator.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"

_NS = uuid.UUID("6d1f3f0e-3c1b-4d59-9a57-6b0f1a1c1d00")
DATE, TIME = "20200101", "120000"


@dataclass(frozen=True)
class SeriesRow:
    collection_id: str
    PatientID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    Modality: str
    crdc_series_uuid: str
    aws_bucket: str


def derived_uid(*parts: object) -> str:
    return "2.25." + str(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16))


def instance_uuid(row: SeriesRow, i: int) -> str:
    return str(uuid.uuid5(_NS, f"{row.crdc_series_uuid}/{i}"))


def _base(row: SeriesRow, sop_class: str, i: int) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = derived_uid(row.crdc_series_uuid, i)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = row.PatientID
    ds.PatientName = row.PatientID.replace(" ", "^")
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = row.StudyInstanceUID
    ds.SeriesInstanceUID = row.SeriesInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = TIME
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = int(hashlib.sha256(row.SeriesInstanceUID.encode()).hexdigest()[:4], 16) % 900 + 1
    ds.InstanceNumber = i + 1
    ds.Modality = row.Modality
    ds.Manufacturer = "idcfs sandbox"
    ds.FrameOfReferenceUID = derived_uid(row.StudyInstanceUID, "frame")
    ds.PositionReferenceIndicator = ""
    ds.ClinicalTrialProtocolID = row.collection_id
    return ds


def _rng(row: SeriesRow, i: int, seed: int) -> np.random.Generator:
    return np.random.default_rng(
        [seed, int(hashlib.sha256(f"{row.crdc_series_uuid}/{i}".encode()).hexdigest()[:8], 16)]
    )


def volume_slice(row: SeriesRow, i: int, n: int, size: int, seed: int) -> Dataset:
    """One axial CT or MR slice of a synthetic phantom (a sphere in noise)."""
    ct = row.Modality == "CT"
    ds = _base(row, CT_STORAGE if ct else MR_STORAGE, i)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    spacing, thickness = 0.7, 1.25
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    z = -i * thickness
    ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, z]
    ds.SliceLocation = z
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if ct else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if ct else 0
    if ct:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP = 120
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 500, 15, 1.5
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    r = size * 0.4 * np.sqrt(max(0.0, 1 - ((i - n / 2) / (n / 2 + 1)) ** 2))
    img = np.where(xx**2 + yy**2 < r**2, 1064 if ct else 800, 24 if ct else 20)
    img = img + _rng(row, i, seed).integers(0, 40, (size, size))
    ds.PixelData = img.astype("<i2" if ct else "<u2").tobytes()
    return ds


def segmentation(row: SeriesRow, sources: list[Dataset]) -> Dataset:
    import highdicom as hd

    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=np.uint8)
    c = sources[0].Rows // 2
    mask[:, c - 40 : c + 40, c - 40 : c + 40] = 1
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Nodule",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=row.SeriesInstanceUID,
        series_number=300,
        sop_instance_uid=derived_uid(row.crdc_series_uuid, 0),
        instance_number=1,
        manufacturer="idcfs sandbox",
        manufacturer_model_name="sandbox",
        software_versions="1",
        device_serial_number="1",
    )
    # highdicom stamps the wall clock; fixed values keep the bytes reproducible.
    seg.ContentDate, seg.ContentTime = DATE, TIME
    seg.SeriesDate, seg.SeriesTime = DATE, TIME
    seg.InstanceCreationDate, seg.InstanceCreationTime = DATE, TIME
    seg.PatientID = row.PatientID
    return seg


def text_report(row: SeriesRow, references: list[Dataset]) -> Dataset:
    ds = _base(row, BASIC_TEXT_SR, 0)
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18782-3", "LN", "Radiology Study observation"
    ds.ConceptNameCodeSequence = Sequence([title])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "Synthetic finding for the idcfs sandbox."
    ds.ContentSequence = Sequence([item])
    ev = Dataset()
    ev.StudyInstanceUID = row.StudyInstanceUID
    ser = Dataset()
    ser.SeriesInstanceUID = references[0].SeriesInstanceUID
    ser.ReferencedSOPSequence = Sequence([_ref(r.SOPClassUID, r.SOPInstanceUID) for r in references])
    ev.ReferencedSeriesSequence = Sequence([ser])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([ev])
    return ds


def _ref(cls: str, uid: str) -> Dataset:
    r = Dataset()
    r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = cls, uid
    return r


def slide_level(row: SeriesRow, i: int, width: int, height: int, tile: int, seed: int) -> Dataset:
    """One pyramid level of a tiled (TILED_FULL) VL whole-slide image, uncompressed RGB."""
    ds = _base(row, WSI_STORAGE, i)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Modality = "SM"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.AcquisitionDateTime = DATE + TIME
    ds.ContainerIdentifier = row.PatientID + "-slide"
    ds.IssuerOfTheContainerIdentifierSequence = Sequence([])
    ctype = Dataset()
    ctype.CodeValue, ctype.CodingSchemeDesignator, ctype.CodeMeaning = "433466003", "SCT", "Microscope slide"
    ds.ContainerTypeCodeSequence = Sequence([ctype])
    spec = Dataset()
    spec.SpecimenIdentifier = row.PatientID + "-specimen"
    spec.SpecimenUID = derived_uid(row.crdc_series_uuid, "specimen")
    spec.IssuerOfTheSpecimenIdentifierSequence = Sequence([])
    spec.SpecimenPreparationSequence = Sequence([])
    ds.SpecimenDescriptionSequence = Sequence([spec])
    base_px = 0.00025  # mm per pixel at the base level
    ds.ImagedVolumeWidth = 24.0 * 4096 * base_px / 1.0
    ds.ImagedVolumeHeight = ds.ImagedVolumeWidth * height / width
    ds.ImagedVolumeDepth = 0.001
    px = ds.ImagedVolumeWidth / width
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    measures = Dataset()
    measures.PixelSpacing = [px, px]
    measures.SliceThickness = 0.001
    measures.SpacingBetweenSlices = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    wsi_type = Dataset()
    wsi_type.FrameType = ds.ImageType
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([wsi_type])
    opt = Dataset()
    opt.OpticalPathIdentifier = "0"
    shared.OpticalPathIdentificationSequence = Sequence([opt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    path = Dataset()
    path.OpticalPathIdentifier = "0"
    path.OpticalPathDescription = "Brightfield"
    illum = Dataset()
    illum.CodeValue, illum.CodingSchemeDesignator, illum.CodeMeaning = "111744", "DCM", "Brightfield illumination"
    path.IlluminationTypeCodeSequence = Sequence([illum])
    color = Dataset()
    color.CodeValue, color.CodingSchemeDesignator, color.CodeMeaning = "414298005", "SCT", "Full Spectrum"
    path.IlluminationColorCodeSequence = Sequence([color])
    ds.OpticalPathSequence = Sequence([path])
    cols, rows = -(-width // tile), -(-height // tile)
    ds.NumberOfFrames = cols * rows
    ds.PixelData = _rng(row, i, seed).integers(0, 256, cols * rows * tile * tile * 3, dtype=np.uint8).tobytes()
    return ds


SLIDE_BASE = (8704, 8448)  # a base level over 200 MiB


def series_datasets(
    row: SeriesRow, n: int, seed: int, sources: list[Dataset] | None = None, slide_base: tuple[int, int] = SLIDE_BASE
) -> Iterator[Dataset]:
    """The instances of one series, in instance order. An SM series is a pyramid with base level `slide_base`."""
    if row.Modality in ("CT", "MR"):
        size = 512 if row.Modality == "CT" else 256
        for i in range(n):
            yield volume_slice(row, i, n, size, seed)
    elif row.Modality == "SEG":
        yield segmentation(row, sources or [])
    elif row.Modality == "SR":
        yield text_report(row, sources or [])
    elif row.Modality == "SM":
        # Each level is a quarter of the one above.
        width, height = slide_base
        for i in range(n):
            yield slide_level(row, i, width >> (2 * i), height >> (2 * i), 256, seed)
    else:
        raise ValueError(f"no generator for modality {row.Modality}")

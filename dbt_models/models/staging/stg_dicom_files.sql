-- The catalog without list columns, for easy grouping.
select
    path, trial, export, patient_id, modality, sop_class_uid, study_instance_uid, series_instance_uid,
    sop_instance_uid, frame_of_reference_uid, study_date, series_description, size_bytes
from {{ source('lake', 'dicom_files') }}

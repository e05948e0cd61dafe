-- The catalog without list columns, for easy grouping. No study dates: outside the bronze catalog
-- (its Parquet) dates are intervals from the planning study (rule 17), see stg_patient_manifest.
select
    path, trial, export, patient_id, modality, sop_class_uid, study_instance_uid, series_instance_uid,
    sop_instance_uid, frame_of_reference_uid, series_description, size_bytes
from {{ source('lake', 'dicom_files') }}

select * from {{ source('lake', 'dicom_rejects') }}

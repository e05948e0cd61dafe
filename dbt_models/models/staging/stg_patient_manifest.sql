select * from {{ source('lake', 'patient_manifest') }}

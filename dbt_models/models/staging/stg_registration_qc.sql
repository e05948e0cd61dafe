select * from {{ source('lake', 'registration_qc') }}

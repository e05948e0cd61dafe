select * from {{ source('lake', 'dose_statistics') }}

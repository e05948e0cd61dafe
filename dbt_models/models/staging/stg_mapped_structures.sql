select * from {{ source('lake', 'mapped_structures') }}

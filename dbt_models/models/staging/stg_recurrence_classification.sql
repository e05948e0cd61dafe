select * from {{ source('lake', 'recurrence_classification') }}

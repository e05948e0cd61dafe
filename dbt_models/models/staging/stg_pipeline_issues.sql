select * from {{ source('lake', 'pipeline_issues') }}

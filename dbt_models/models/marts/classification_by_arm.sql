-- Cohort counts per arm × level × scheme × class: the table behind the dashboard's bars.
with long as (
    select arm, level, 'seed_volume' as scheme,
           case volume_class when 1 then 'inside' when 2 then 'peripheral' when 0 then 'outside' end as class
    from {{ ref('stg_recurrence_classification') }} where level_present
    union all
    select arm, level, 'seed_centroid', case centroid_class when 1 then 'inside' else 'outside' end
    from {{ ref('stg_recurrence_classification') }} where level_present
    union all
    select arm, level, 'dawson', dawson_class
    from {{ ref('stg_recurrence_classification') }} where level_present
    union all
    select arm, 'patient', 'mohamed', mohamed_type
    from {{ ref('stg_recurrence_classification') }} where level = 'high'
)
select arm, level, scheme, class, count(*) as patients
from long
group by all
order by arm, level, scheme, class

-- Patients per arm × level × scheme × class, with the percentage of the arm's patients classified
-- at that level under that scheme (absent levels are not counted: an arm without a low level has no
-- low-level rows here).
with classified as (
    select arm, level, level_order, scheme, scheme_order, class_code, class_label, class_order
    from {{ ref('classification_long') }}
    where class_code is not null
),
counts as (
    select arm, level, level_order, scheme, scheme_order, class_code, class_label, class_order, count(*) as patients
    from classified
    group by all
)
select
    *,
    sum(patients) over (partition by arm, level, scheme) as arm_level_patients,
    round(100.0 * patients / sum(patients) over (partition by arm, level, scheme), 1) as pct_of_arm_level
from counts
order by arm, level_order, scheme_order, class_order

-- One row per patient × level × scheme: the long table a statistician starts from.
-- Schemes: seed_volume and seed_centroid (codes 1/2/0 and 1/0 as in the seed), dawson, and mohamed
-- (per patient: level 'patient'). A level the patient's arm does not prescribe stays as a row with
-- level_present = false and NULL class, prescription and fractions (never 0).
with c as (
    select * from {{ ref('stg_recurrence_classification') }}
),
long as (
    select patient_id, trial, arm, level, level_present, prescription_gy, 'seed_volume' as scheme, 1 as scheme_order,
           cast(volume_class as varchar) as class_code,
           case volume_class when 1 then 'inside' when 2 then 'peripheral' when 0 then 'outside' end as class_label,
           case volume_class when 1 then 1 when 2 then 2 when 0 then 3 end as class_order,
           sphere_fraction as class_fraction
    from c
    union all
    select patient_id, trial, arm, level, level_present, prescription_gy, 'seed_centroid', 2,
           cast(centroid_class as varchar),
           case centroid_class when 1 then 'inside' when 0 then 'outside' end,
           case centroid_class when 1 then 1 when 0 then 3 end,
           null
    from c
    union all
    select patient_id, trial, arm, level, level_present, prescription_gy, 'dawson', 3,
           dawson_class, dawson_class,
           case dawson_class when 'in-field' then 1 when 'marginal' then 2 when 'outside' then 3 end,
           dawson_fraction
    from c
    union all
    select patient_id, trial, arm, 'patient', mohamed_type is not null, null, 'mohamed', 4,
           mohamed_type, mohamed_type, ascii(mohamed_type) - ascii('A') + 1, null
    from c
    where level = 'high'
)
select
    l.patient_id,
    l.trial,
    l.arm,
    l.level,
    case l.level when 'low' then 1 when 'intermediate' then 2 when 'high' then 3 else 4 end as level_order,
    coalesce(l.level_present, false) as level_present,
    l.scheme,
    l.scheme_order,
    case when l.level_present then l.class_code end as class_code,
    case when l.level_present then l.class_label end as class_label,
    case when l.level_present then l.class_order end as class_order,
    case when l.level_present then round(l.class_fraction, 4) end as class_fraction,
    case when l.level_present then l.prescription_gy end as prescription_gy,
    round(h.centroid_dose_gy, 3) as centroid_dose_gy,
    case when l.level_present and l.prescription_gy > 0
         then round(100 * h.centroid_dose_gy / l.prescription_gy, 1) end as centroid_dose_pct_of_prescription,
    case when l.level_present then round(lv.probability_inside, 4) end as probability_inside,
    round(h.uncertainty_mm, 3) as uncertainty_mm,
    round(h.radius_mm, 3) as radius_mm,
    h.radius_policy,
    round(h.sigma_mm, 3) as sigma_mm
from long l
join c h on h.patient_id = l.patient_id and h.level = 'high'
left join c lv on lv.patient_id = l.patient_id and lv.level = l.level

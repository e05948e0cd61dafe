-- One row per patient: arm, uncertainty, the high-risk level's classes, registration quality,
-- open issues and covariates. The table statisticians start from.
with high as (
    select * from {{ ref('stg_recurrence_classification') }} where level = 'high'
),
issues as (
    select patient_id, count(*) as open_issues, string_agg(distinct code, ', ' order by code) as issue_codes
    from {{ ref('stg_pipeline_issues') }}
    group by patient_id
),
relapse as (  -- rule 17: the relapse interval, never the dates
    select patient_id, days_from_planning as relapse_interval_days,
           round(days_from_planning / 30.4375, 1) as relapse_interval_months
    from {{ ref('stg_patient_manifest') }} where role = 'relapse_rtstruct'
),
patients as (
    select patient_id from {{ ref('stg_patient_manifest') }}
    union select patient_id from issues
    union select patient_id from {{ ref('stg_trial_covariates') }}
)
select
    p.patient_id,
    h.arm,
    h.arm_source,
    h.arm_mismatch,
    c.site,
    c.t_stage,
    c.age_group,
    c.months_to_relapse,
    r.relapse_interval_days,
    r.relapse_interval_months,
    h.uncertainty_mm,
    h.radius_mm,
    h.centroid_dose_gy,
    h.centroid_class as high_centroid_class,
    h.volume_class as high_volume_class,
    h.sphere_fraction as high_sphere_fraction,
    h.dawson_class as high_dawson_class,
    h.dawson_fraction as high_dawson_fraction,
    h.mohamed_type,
    h.probability_inside as high_probability_inside,
    q.engine as registration_engine,
    q.landmark_distance_mm,
    q.tre_mean_mm,
    q.folding_fraction,
    coalesce(i.open_issues, 0) as open_issues,
    i.issue_codes,
    h.patient_id is not null as classified
from patients p
left join high h using (patient_id)
left join {{ ref('stg_registration_qc') }} q using (patient_id)
left join {{ ref('stg_trial_covariates') }} c using (patient_id)
left join issues i using (patient_id)
left join relapse r using (patient_id)

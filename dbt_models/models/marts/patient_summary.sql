-- One row per patient known to the pipeline (classified or not): trial covariates, arm, uncertainty
-- and the radius policy in use, every level's classes side by side (NULL where the arm has no such
-- level), Mohamed type, registration QC and open issues. The wide table statisticians start from.
{%- set levels = ['low', 'intermediate', 'high'] %}
with cls as (
    select * from {{ ref('stg_recurrence_classification') }}
),
high as (
    select * from cls where level = 'high'
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
    union select patient_id from cls
),
wide as (
    select
        patient_id
        {%- for lvl in levels %},
        max(case when level = '{{ lvl }}' and level_present then prescription_gy end) as {{ lvl }}_prescription_gy,
        max(case when level = '{{ lvl }}' and level_present
                 then round(100 * centroid_dose_gy / prescription_gy, 1) end) as {{ lvl }}_centroid_dose_pct_of_prescription,
        max(case when level = '{{ lvl }}' and level_present then centroid_class end) as {{ lvl }}_centroid_class,
        max(case when level = '{{ lvl }}' and level_present then volume_class end) as {{ lvl }}_volume_class,
        max(case when level = '{{ lvl }}' and level_present then round(sphere_fraction, 4) end) as {{ lvl }}_sphere_fraction,
        max(case when level = '{{ lvl }}' and level_present then fixed_radius_volume_class end) as {{ lvl }}_fixed_radius_volume_class,
        max(case when level = '{{ lvl }}' and level_present then patient_radius_volume_class end) as {{ lvl }}_patient_radius_volume_class,
        max(case when level = '{{ lvl }}' and level_present then dawson_class end) as {{ lvl }}_dawson_class,
        max(case when level = '{{ lvl }}' and level_present then round(dawson_fraction, 4) end) as {{ lvl }}_dawson_fraction,
        max(case when level = '{{ lvl }}' and level_present then round(probability_inside, 4) end) as {{ lvl }}_probability_inside
        {%- endfor %}
    from cls
    group by patient_id
),
qc as (
    select
        *,
        landmark_distance_mm <= {{ var('qc_max_landmark_distance_mm', 5.0) }}
            and coalesce(folding_fraction, 0) <= {{ var('qc_max_folding_fraction', 0.001) }} as registration_qc_passed
    from {{ ref('stg_registration_qc') }}
)
select
    p.patient_id,
    h.trial,
    coalesce(h.arm, c.arm) as arm,
    h.arm_source,
    h.arm_from_dose,
    h.arm_mismatch,
    c.site,
    c.t_stage,
    c.n_stage,
    c.hpv_status,
    c.smoking,
    c.age_group,
    c.sex,
    c.months_to_relapse,
    r.relapse_interval_days,
    r.relapse_interval_months,
    round(h.uncertainty_mm, 3) as uncertainty_mm,
    round(h.radius_mm, 3) as radius_mm,
    h.radius_policy,
    round(h.sigma_mm, 3) as sigma_mm,
    round(h.centroid_x_mm, 2) as centroid_x_mm,
    round(h.centroid_y_mm, 2) as centroid_y_mm,
    round(h.centroid_z_mm, 2) as centroid_z_mm,
    round(h.centroid_dose_gy, 3) as centroid_dose_gy,
    h.centroid_in_dose_grid,
    round(h.fixed_radius_mm, 3) as fixed_radius_mm,
    round(h.patient_radius_mm, 3) as patient_radius_mm,
    {%- for lvl in levels %}
    w.{{ lvl }}_prescription_gy,
    w.{{ lvl }}_centroid_dose_pct_of_prescription,
    w.{{ lvl }}_centroid_class,
    w.{{ lvl }}_volume_class,
    w.{{ lvl }}_sphere_fraction,
    w.{{ lvl }}_fixed_radius_volume_class,
    w.{{ lvl }}_patient_radius_volume_class,
    w.{{ lvl }}_dawson_class,
    w.{{ lvl }}_dawson_fraction,
    w.{{ lvl }}_probability_inside,
    {%- endfor %}
    h.mohamed_type,
    q.engine as registration_engine,
    q.relapse_modality,
    round(q.landmark_distance_mm, 3) as landmark_distance_mm,
    round(q.tre_mean_mm, 3) as tre_mean_mm,
    round(q.tre_max_mm, 3) as tre_max_mm,
    round(q.jacobian_min, 4) as jacobian_min,
    q.folding_fraction,
    q.registration_qc_passed,
    coalesce(i.open_issues, 0) as open_issues,
    i.issue_codes,
    h.patient_id is not null as classified
from patients p
left join high h using (patient_id)
left join wide w using (patient_id)
left join qc q using (patient_id)
left join {{ ref('stg_trial_covariates') }} c using (patient_id)
left join issues i using (patient_id)
left join relapse r using (patient_id)

-- Cohort registration quality, one row per engine (QC limits: dbt vars qc_max_landmark_distance_mm,
-- qc_max_folding_fraction; defaults are the bundled trial's).
select
    engine,
    count(*) as patients,
    count(*) filter (where landmark_distance_mm > {{ var('qc_max_landmark_distance_mm', 5.0) }}
                     or coalesce(folding_fraction, 0) > {{ var('qc_max_folding_fraction', 0.001) }}) as patients_failing_qc,
    round(avg(landmark_distance_mm), 3) as mean_landmark_distance_mm,
    round(max(landmark_distance_mm), 3) as max_landmark_distance_mm,
    round(avg(tre_mean_mm), 3) as mean_tre_mm,
    round(max(tre_max_mm), 3) as max_tre_mm,
    max(folding_fraction) as max_folding_fraction
from {{ ref('stg_registration_qc') }}
group by engine

-- Cohort registration quality, one row per engine.
select
    engine,
    count(*) as patients,
    avg(landmark_distance_mm) as mean_landmark_distance_mm,
    max(landmark_distance_mm) as max_landmark_distance_mm,
    avg(tre_mean_mm) as mean_tre_mm,
    max(tre_max_mm) as max_tre_mm,
    max(folding_fraction) as max_folding_fraction
from {{ ref('stg_registration_qc') }}
group by engine

{% test unique_patient_level(model) %}
-- One classification row per patient × level.
select patient_id, level, count(*) as n
from {{ model }}
group by patient_id, level
having count(*) > 1
{% endtest %}

select * from {{ source('lake', 'trial_covariates') }}

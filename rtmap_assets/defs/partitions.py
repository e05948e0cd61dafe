"""One dynamic partition per patient (trial subject ID); the raw-data sensor adds them."""

import dagster as dg

patients_partitions = dg.DynamicPartitionsDefinition(name="patients")

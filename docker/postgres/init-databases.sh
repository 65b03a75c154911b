#!/bin/bash
# One Postgres for both servers: a role and a database each for MLflow and Prefect.
# The postgres image runs this once, on the first start with an empty data volume
# (/docker-entrypoint-initdb.d); passwords come from the service's environment (docker/.env).
set -euo pipefail

for name in mlflow prefect; do
    password_var="${name^^}_DB_PASSWORD"
    # psql variables (:"name", :'password') quote the identifier and the literal for us.
    psql --set=ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set=name="$name" --set=password="${!password_var:?$password_var is not set}" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done

-- The MLflow tracking server's own database, beside Airflow's (POSTGRES_DB=airflow), and the
-- users of its basic-auth app.
CREATE DATABASE mlflow OWNER mlops;
CREATE DATABASE mlflow_auth OWNER mlops;

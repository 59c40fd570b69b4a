-- The MLflow tracking server's own database, beside Airflow's (POSTGRES_DB=airflow).
CREATE DATABASE mlflow OWNER mlops;

"""One module per pipeline step, named by its verb. No Airflow imports here."""

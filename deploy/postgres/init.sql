-- One database per service (each service owns its data); run once by the postgres image on
-- its first start.
CREATE DATABASE catalog;
CREATE DATABASE orders;

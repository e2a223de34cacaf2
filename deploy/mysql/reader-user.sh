#!/bin/sh
# The index readers' database user, which may only read (GRANT SELECT): a
# reader cannot write even if our code would. Run once by the mysql image
# when it first makes its data directory (/docker-entrypoint-initdb.d); its
# password comes from the secret mysql-reader-password (imgsearch secrets).
# SECRETS_DIR, MYSQL_CLIENT: other places and clients (the tests).
set -eu
dir="${SECRETS_DIR:-/run/secrets}"
database="${MYSQL_DATABASE:-imagesearch}"
reader_password="$(cat "$dir/mysql-reader-password")"
MYSQL_PWD="$(cat "$dir/mysql-root-password")"
export MYSQL_PWD
${MYSQL_CLIENT:-mysql -uroot} <<SQL
CREATE USER IF NOT EXISTS 'imagesearch_reader'@'%' IDENTIFIED BY '${reader_password}';
ALTER USER 'imagesearch_reader'@'%' IDENTIFIED BY '${reader_password}';
GRANT SELECT ON \`${database}\`.* TO 'imagesearch_reader'@'%';
SQL

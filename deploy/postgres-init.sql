-- One database per service: the services never join across them.
create database allocator;
create database gateway;

"""`distill eval`: sample k answers per problem from one or more models, score them, write one report."""
